"""configs/: importable, variants chosen by `get_config(arg)`, every variant a valid run config."""

import subprocess
import sys

import pytest

import configs.eval as eval_config
from configs import common, grpo, grpo_3b, grpo_7b, sft
from sif_jax.run_config import validate_config
from tests.train.conftest import ROOT


def test_parse_arg_reads_bare_flags_and_typed_values():
    arg = common.parse_arg("phase=sft, runlocal,steps=3,lr=0.5", phase="grpo", runlocal=False, steps=1, lr=1.0)
    assert (arg.phase, arg.runlocal, arg.steps, arg.lr) == ("sft", True, 3, 0.5)
    assert common.parse_arg(None, runlocal=False).runlocal is False
    assert common.parse_arg("runlocal=false", runlocal=True).runlocal is False


@pytest.mark.parametrize("arg, message", [
    ("size=7b", r"'size=7b': unknown option 'size'"),
    ("runlocal=maybe", r"'runlocal=maybe': expected runlocal=true or runlocal=false"),
    ("steps=x", r"'steps=x': steps must be a int"),
    ("steps", r"'steps': expected steps=<int>"),
])
def test_parse_arg_names_the_bad_item(arg, message):
    with pytest.raises(ValueError, match=message):
        common.parse_arg(arg, runlocal=False, steps=1)


def test_unknown_phase_is_an_error():
    with pytest.raises(ValueError, match=r"phase='rl'"):
        grpo.get_config("phase=rl")


def test_variants():
    default, small = grpo.get_config(), grpo.get_config("runlocal")
    assert (default.data.image_size, default.sft.steps, default.grpo.steps) == (224, 300, 30)
    assert (small.data.image_size, small.sft.steps, small.grpo.steps, small.grpo.max_new_tokens) == (112, 8, 20, 24)
    assert "eval_seed" not in default.data
    assert default.grpo.vocab_chunk == 4096
    warmup = grpo.get_config("phase=sft")
    assert (warmup.workdir, warmup.sft.steps, warmup.grpo.steps) == ("workdir/sft", 600, 0)
    assert sft.get_config().to_dict() == warmup.to_dict()
    assert sft.get_config("runlocal").to_dict() == grpo.get_config("runlocal,phase=sft").to_dict()
    assert (grpo_7b.get_config().model, grpo_3b.get_config().model) == ("qwen2_5_vl_7b", "qwen2_5_vl_3b")
    small_model = grpo.get_config("small")
    assert (small_model.model, small_model.data.image_size, small_model.sft.steps, small_model.grpo.steps) == (
        "small", 224, 1200, 40)
    assert (grpo.get_config("small,phase=sft").workdir, grpo.get_config("small,phase=sft").sft.steps) == (
        "workdir/sft_small", 1200)


@pytest.mark.parametrize("module, arg", [(grpo, None), (grpo, "runlocal"), (grpo, "phase=sft"),
                                         (grpo, "runlocal,phase=sft"), (grpo, "small"), (sft, "small"),
                                         (sft, None), (grpo_7b, None), (grpo_3b, None)])
def test_every_variant_is_a_valid_run_config(module, arg):
    validate_config(module.get_config(arg), check_files=False)


def test_eval_config_imports():
    assert eval_config.get_config().decoding == "greedy"


def test_config_flag_passes_the_part_after_the_colon():
    script = ("from absl import flags; from ml_collections import config_flags; import sys\n"
              "c = config_flags.DEFINE_config_file('config')\n"
              "flags.FLAGS(sys.argv)\n"
              "print(c.value.data.image_size, c.value.grpo.steps, c.value.workdir)\n")
    out = subprocess.run([sys.executable, "-c", script, "--config=configs/grpo.py:runlocal,phase=sft",
                          "--config.grpo.max_new_tokens=8"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["112", "0", "workdir/sft"]
