"""The error convention every command line shares (`sif_jax.cli`): bad input is one `error: ...` line on
stderr and a non-zero exit status; `--verbose` shows the traceback instead. Plus the library pieces
the command lines are built on: one HF-directory test, one tokenizer-fits-model check, and a
training library that imports no command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from sif_jax import cli
from sif_jax.checkpoint_loading import EXPORT_META, PARAMS_DIR, checkpoint_kind, is_hf_dir
from sif_jax.data.tokenizer import BuiltinTokenizer, check_tokenizer
from sif_jax.errors import InputError, one_line
from sif_jax.model.config import tiny
from tests.cli.conftest import ROOT, run_many

# (command, arguments with one bad value that every command rejects before loading anything,
#  expected exit status, words the error line names)
BAD_ARGUMENT = {
    "train": (["--config=configs/grpo.py", "--config.grpo.group_size=1"], 2,
              ["config.grpo.group_size=1", "GRPO needs >= 2"]),
    "evaluate": (["--config=configs/eval.py", "--config.checkpoint=nowhere", "--config.decoding=beam"], 1,
                 ["config.decoding='beam'", "greedy, adaptvis"]),
    "generate": (["--checkpoint=nowhere", "--image=nowhere.png", "--question=q", "--max_new_tokens=0"], 1,
                 ["--max_new_tokens=0", "must be >= 1"]),
    "export": (["--checkpoint=nowhere", "--format=hf", "--out=nowhere_out", "--dtype=float8"], 1,
               ["--dtype='float8'", "float32"]),
    "plan": (["--config=configs/grpo.py", "--topology=v5p-8", "--config.grpo.group_size=1"], 2,
             ["config.grpo.group_size=1"]),
}
COMMANDS = list(BAD_ARGUMENT)


@pytest.fixture(scope="module")
def bad_argument_runs():
    """Every command run twice on its bad argument (plain and with --verbose), concurrently."""
    calls = [(c, BAD_ARGUMENT[c][0]) for c in COMMANDS] + [(c, [*BAD_ARGUMENT[c][0], "--verbose"]) for c in COMMANDS]
    procs = run_many(calls)
    return {c: (procs[i], procs[len(COMMANDS) + i]) for i, c in enumerate(COMMANDS)}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_argument_is_one_error_line_and_a_non_zero_exit(bad_argument_runs, command):
    proc, _ = bad_argument_runs[command]
    _, status, words = BAD_ARGUMENT[command]
    assert proc.returncode == status, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.mark.parametrize("command", COMMANDS)
def test_verbose_shows_the_traceback(bad_argument_runs, command):
    _, proc = bad_argument_runs[command]
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert BAD_ARGUMENT[command][2][0] in proc.stderr  # the same error, raised


# ---------------------------------------------------------------------------- run_cli / fail in process


def _raise(exc: BaseException):
    def work():
        raise exc

    return work


@pytest.mark.parametrize("exc, usage, status, line", [
    (InputError("--flag=3: must be >= 4"), (), 1, "error: --flag=3: must be >= 4"),
    (ValueError("config.x=1: bad\nsecond line"), (ValueError,), 2, "error: config.x=1: bad; second line"),
    (RuntimeError("boom"), (ValueError,), 1, "error: RuntimeError: boom"),
    (KeyError("config.y"), (), 1, "error: config.y"),
    (KeyboardInterrupt(), (), 130, "error: interrupted"),
])
def test_run_cli_turns_an_exception_into_one_line_and_a_status(capsys, exc, usage, status, line):
    with pytest.raises(SystemExit) as info:
        cli.run_cli(_raise(exc), verbose=False, usage_errors=usage)
    assert info.value.code == status
    assert capsys.readouterr().err == line + "\n"


def test_run_cli_returns_the_result_reraises_when_verbose_and_lets_exits_through(capsys):
    assert cli.run_cli(lambda: 7, verbose=False) == 7
    with pytest.raises(InputError, match="bad"):
        cli.run_cli(_raise(InputError("bad")), verbose=True)
    with pytest.raises(SystemExit) as info:
        cli.run_cli(_raise(SystemExit(143)), verbose=False)
    assert info.value.code == 143
    assert capsys.readouterr().err == ""


def test_argument_parser_usage_error_is_one_line_with_status_2(capsys):
    parser = cli.ArgumentParser(prog="python -m sif_jax.x")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n=x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --n: invalid int value: 'x'")
    assert err.rstrip().endswith("(see python -m sif_jax.x --help)")


def test_input_error_is_a_value_error_and_one_line_keeps_its_text():
    assert issubclass(InputError, ValueError)
    assert one_line(InputError("a\n  b\n")) == "a; b"
    assert one_line(FileNotFoundError("missing")) == "missing"
    assert one_line(TypeError("x")) == "TypeError: x"


# ---------------------------------------------------------------------------- one definition each


def test_is_hf_dir_and_checkpoint_kind(tmp_path):
    hf, export, run, file = tmp_path / "hf", tmp_path / "export", tmp_path / "run", tmp_path / "f"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    export.mkdir()
    (export / EXPORT_META).write_text("{}")
    (export / PARAMS_DIR).mkdir()
    run.mkdir()
    file.write_text("")
    assert [is_hf_dir(str(p)) for p in (hf, export, run, file, tmp_path / "missing")] == [
        True, False, False, False, False]
    assert [checkpoint_kind(str(p)) for p in (hf, export, run)] == ["hf", "params", "run"]
    with pytest.raises(InputError, match="does not exist"):
        checkpoint_kind(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="is not a directory"):
        checkpoint_kind(str(file))


def test_check_tokenizer_names_the_field_and_both_values():
    tok, config = BuiltinTokenizer(), tiny()
    check_tokenizer(tok, config)  # the built-in tokenizer fits the tiny model
    small = config.replace(text=dataclasses.replace(config.text, vocab_size=tok.vocab_size - 1))
    with pytest.raises(InputError, match=rf"config.tokenizer: the tokenizer has {tok.vocab_size} tokens but the "
                                         rf"model's vocabulary has {tok.vocab_size - 1}"):
        check_tokenizer(tok, small, what="config.tokenizer")
    other = config.replace(eos_token_id=tok.eos_id + 1)
    with pytest.raises(InputError, match=rf"--tokenizer: the tokenizer's eos_id={tok.eos_id} but the model expects "
                                         rf"{tok.eos_id + 1}"):
        check_tokenizer(tok, other)


def test_the_training_library_imports_no_command_line():
    code = ("import sys, json, sif_jax.train, sif_jax.evaluation, sif_jax.checkpoint_loading, sif_jax.data.sources; "
            "print(json.dumps(sorted(m for m in sys.modules if m in ('sif_jax.cli', 'sif_jax.evaluate', "
            "'sif_jax.generate', 'sif_jax.export', 'sif_jax.plan'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
