"""Bad input to every command line: one `error: ...` line on stderr, exit status != 0, no traceback."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import eval_args, run_cli, run_many

LONG_QUESTION = "Is the small red cube to the left of the large blue sphere? " * 300


def _cases(files, tmp):
    bad_png = tmp / "broken.png"
    bad_png.write_text("this is not a PNG")
    long_vsr = tmp / "long.jsonl"
    long_vsr.write_text(json.dumps({"image": "scene0.png", "caption": LONG_QUESTION, "label": 1}) + "\n")
    run, image = files["run"], files["images"][0]
    missing = str(tmp / "no_such_run")
    gen = ["--image=" + image, "--question=Is it red?"]
    return {
        "evaluate-missing-checkpoint": ("evaluate", eval_args(missing), [missing, "does not exist"]),
        "generate-missing-checkpoint": ("generate", [f"--checkpoint={missing}", *gen], ["does not exist"]),
        "export-missing-checkpoint": ("export", [f"--checkpoint={missing}", "--format=hf", f"--out={tmp / 'o'}"],
                                      ["does not exist"]),
        "export-empty-directory": ("export", [f"--checkpoint={tmp}", "--format=orbax", f"--out={tmp / 'o'}"],
                                   ["no sif_jax checkpoint"]),
        "generate-unreadable-image": ("generate", [f"--checkpoint={run}", f"--image={bad_png}", "--question=q"],
                                      ["cannot read image", "broken.png"]),
        "generate-missing-image": ("generate", [f"--checkpoint={run}", f"--image={tmp / 'nope.png'}",
                                                "--question=q"], ["nope.png", "does not exist"]),
        "generate-question-too-long": ("generate", [f"--checkpoint={run}", f"--image={image}",
                                                    f"--question={LONG_QUESTION}"],
                                       ["prompt is", "--max_prompt_tokens=2048"]),
        "evaluate-question-too-long": ("evaluate", eval_args(run, f"--config.data.source=vsr:{long_vsr}:"
                                                                  f"{files['image_dir']}"),
                                       ["prompt is", "largest length bucket 256"]),
        "generate-wrong-model": ("generate", [f"--checkpoint={run}", *gen, "--model=qwen2_5_vl_3b"],
                                 ["tiny", "qwen2_5_vl_3b", "36 layers"]),
        "evaluate-wrong-model": ("evaluate", eval_args(run, "--config.model=qwen2_5_vl_7b"),
                                 ["tiny", "--config.model=qwen2_5_vl_7b"]),
        "export-wrong-model": ("export", [f"--checkpoint={run}", "--format=hf", f"--out={tmp / 'o'}",
                                          "--model=qwen2_5_vl_3b"], ["tiny", "qwen2_5_vl_3b"]),
        "evaluate-bad-decoding": ("evaluate", eval_args(run, "--config.decoding=beam"), ["config.decoding"]),
        "evaluate-unknown-field": ("evaluate", eval_args(run, "--config.no_such_field=1"), ["no_such_field"]),
        "generate-missing-flag": ("generate", [f"--checkpoint={run}", "--question=q"], ["--image"]),
    }


CASES = ["evaluate-missing-checkpoint", "generate-missing-checkpoint", "export-missing-checkpoint",
         "export-empty-directory", "generate-unreadable-image", "generate-missing-image",
         "generate-question-too-long", "evaluate-question-too-long", "generate-wrong-model", "evaluate-wrong-model",
         "export-wrong-model", "evaluate-bad-decoding", "evaluate-unknown-field", "generate-missing-flag"]


@pytest.fixture(scope="module")
def bad_runs(cli_files, tmp_path_factory):
    """Every case run once, concurrently: {case: (CompletedProcess, expected words)}."""
    cases = _cases(cli_files, tmp_path_factory.mktemp("bad"))
    procs = run_many([(cases[c][0], cases[c][1]) for c in CASES])
    return {c: (p, cases[c][2]) for c, p in zip(CASES, procs, strict=True)}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(bad_runs, case):
    proc, words = bad_runs[case]
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_verbose_shows_the_traceback(cli_files, tmp_path):
    proc = run_cli("generate", f"--checkpoint={tmp_path / 'missing'}", f"--image={cli_files['images'][0]}",
                   "--question=q", "--verbose")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
