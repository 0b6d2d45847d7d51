"""The planner: every program of a GRPO run AOT-compiles for a TPU topology from a CPU host."""

import functools
import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # libtpu may already be loaded by another process
try:
    import libtpu  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the [test] extra, which brings libtpu: never skip there
    pytest.skip("libtpu is not installed (pip install 'jax[tpu]')", allow_module_level=True)

from configs import grpo  # noqa: E402
from sif_jax import plan as plan_lib  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GRPO_PROGRAMS = ["sampler_prefill", "sampler_decode", "sampler_generate", "score_policy", "score_reference",
                 "grpo_loss_grads", "grpo_update"]
SMALL = ["--config.attention_backend=xla", "--config.data.image_size=56", "--config.data.length_buckets=(64,)",
         "--config.data.patch_buckets=(16,)", "--config.grpo.max_new_tokens=8"]


def small_config(mesh=(1, 4, 1)):
    """The tiny preset at the smallest shapes: a 56 px image (4 visual tokens), 64-token prompts."""
    c = grpo.get_config()
    c.attention_backend = "pallas_tpu"  # the real Mosaic kernel, as a TPU run picks by default
    c.data.image_size = 56
    c.data.length_buckets = (64,)
    c.data.patch_buckets = (16,)
    c.sft.batch_size = 4
    c.grpo.prompts_per_step = 4
    c.grpo.micro_batch_prompts = 2  # two micro-batches: the gradient accumulator is resident
    c.grpo.group_size = 2
    c.grpo.max_new_tokens = 8
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    return subprocess.run([sys.executable, "-m", "sif_jax.plan", "--config=configs/grpo.py", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@functools.cache  # one xdist worker runs this whole file: the region-supervision test reuses its sft_grads row
def grpo_run_plan_v5p_8() -> plan_lib.Plan:
    return plan_lib.plan(small_config((1, 4, 1)), "v5p-8")


def test_every_program_of_a_grpo_run_compiles_for_v5p_8():
    mesh = (1, 4, 1)
    result = grpo_run_plan_v5p_8()
    assert result.mesh == dict(zip(("data", "fsdp", "tensor"), mesh, strict=True))
    assert [r.name for r in result.rows] == ["sft_grads", "sft_update", *GRPO_PROGRAMS]
    assert result.failure() is None
    chip = plan_lib.CHIPS["v5p"]
    for row in result.rows:
        assert not row.error, row
        # every program that runs the model holds the Mosaic region-attention kernel (shard_mapped)
        assert (row.mosaic_calls > 0) == (not row.name.endswith("_update")), row
        assert row.arguments > 0 and row.outputs > 0 and row.total > 0, row
        assert row.flops > 0 and row.bytes_accessed > 0, row
        assert row.total <= result.hbm_bytes
        if row.name != "sampler_generate":
            roofline = max(row.flops / chip.peak_flops, row.bytes_accessed / chip.hbm_bandwidth)
            assert row.seconds == pytest.approx(roofline)
    rows = {r.name: r for r in result.rows}
    # the decode loop runs max_new_tokens steps after the prefill
    assert rows["sampler_generate"].seconds == pytest.approx(
        rows["sampler_prefill"].seconds + 8 * rows["sampler_decode"].seconds)
    # donated train state: the update's outputs alias its state argument
    assert rows["grpo_update"].aliased > 0 and rows["sft_update"].aliased > 0
    # the whole train state is an argument of the update; while scoring, all of it but the
    # params (reference + Adam moments + counters) is resident
    assert rows["grpo_update"].resident == 0
    assert 0 < rows["score_policy"].resident < rows["grpo_update"].arguments
    # FSDP: the gradient comes out sharded like the params, not replicated per chip
    assert rows["grpo_loss_grads"].outputs < rows["grpo_loss_grads"].arguments
    assert rows["sft_grads"].outputs < rows["sft_grads"].arguments
    # two micro-batches: the gradient accumulator lives on during the loss
    assert rows["grpo_loss_grads"].resident > rows["score_policy"].resident


def test_data_and_tensor_mesh_compiles_the_kernel_programs_for_v5p_8():
    """(data=2, tensor=2): the Mosaic kernel, shard_mapped over batch and heads, in the prefill, the
    one-token decode step and the loss's backward pass (the update and SFT programs, whose sharding
    the FSDP test above covers, are left out to keep the test short)."""
    programs = ("sampler_prefill", "sampler_decode", "grpo_loss_grads")
    result = plan_lib.plan(small_config((2, 1, 2)), "v5p-8", programs=programs)
    assert result.mesh == {"data": 2, "fsdp": 1, "tensor": 2} and result.failure() is None
    assert tuple(r.name for r in result.rows) == programs
    for row in result.rows:
        assert not row.error and row.mosaic_calls > 0 and row.flops > 0 and row.total <= result.hbm_bytes, row


def test_every_program_of_a_qwen3_vl_run_compiles_for_v5p_8():
    """Qwen3-VL through the family interface: its batched vision arrays (pos_indices / pos_weights
    sharded with the rows) and DeepStack in the programs that run the model: the SFT and GRPO
    gradients (the scorers are their forward passes), the prefill and the one-token decode step (the
    updates, which do not run the model, and the whole decode loop are left out to keep it short)."""
    c = small_config()
    c.model = "qwen3_vl_tiny"  # 56 px -> 64 px: 4 x 4 patches of 16 px, 4 image tokens
    c.data.min_pixels = 56 * 56  # below Qwen3-VL's released floor (256 x 256), to keep the image small
    c.attention_backend = "xla"
    programs = ("sft_grads", "sampler_prefill", "sampler_decode", "grpo_loss_grads")
    result = plan_lib.plan(c, "v5p-8", programs=programs)
    assert tuple(r.name for r in result.rows) == programs
    assert result.failure() is None
    for row in result.rows:
        assert not row.error and row.flops > 0 and row.total <= result.hbm_bytes, row


def test_cli_json_parses_and_names_every_requested_program():
    out = run_cli("--topology=v5p-8", "--json", "--programs=grpo_update,sft_update", *SMALL)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["ok"] is True and result["failure"] is None
    assert result["accelerator"] == "v5p-8" and result["chip"]["generation"] == "v5p"
    assert [p["name"] for p in result["programs"]] == ["sft_update", "grpo_update"]
    for p in result["programs"]:
        assert p["fits"] and p["total"] > 0 and p["flops"] > 0


def test_unknown_topology_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="v5p-8") as info:
        plan_lib.plan(small_config(), "v9-8")
    assert "'v9-8' is unknown" in str(info.value)
    out = run_cli("--topology=v9-8", *SMALL)
    assert out.returncode == 2
    assert "v9-8" in out.stderr and "v5litepod-16" in out.stderr


def test_a_program_that_does_not_fit_fails_naming_it():
    out = run_cli("--topology=v5p-8", "--hbm_gib=0.001", "--programs=grpo_update", *SMALL)
    assert out.returncode == 1
    assert "program grpo_update does not fit" in out.stderr
    assert "grpo_update" in out.stdout and "NO" in out.stdout


def test_unknown_program_is_an_error():
    with pytest.raises(ValueError, match="not programs of this run"):
        plan_lib.plan(small_config(), "v5p-8", programs=["nope"])


@pytest.mark.parametrize("accelerator", sorted(plan_lib.ACCELERATORS))
def test_every_accelerator_name_maps_to_a_topology_with_its_chip_count(accelerator):
    devices, chip = plan_lib.topology_devices(accelerator)
    assert len(devices) == plan_lib.ACCELERATORS[accelerator].chips
    family = {"v4": "v4", "v5litepod": "v5e", "v5p": "v5p", "v6e": "v6e"}[accelerator.rsplit("-", 1)[0]]
    assert chip.generation == family


def test_sft_region_attention_supervision_compiles_and_costs_its_probabilities():
    """With sft.region_attention_weight > 0 the planned sft_grads is the supervised one: it compiles
    (Mosaic kernel in the forward, recomputed probabilities for the loss) and needs more temporaries."""
    c = small_config()
    c.grpo.steps = 0
    c.sft.region_attention_weight = 1.0
    c.sft.region_attention_layers = (0, 1, 2, 3)
    result = plan_lib.plan(c, "v5p-8", programs=("sft_grads",))
    (supervised,) = result.rows
    assert not supervised.error and result.failure() is None, supervised
    plain = {r.name: r for r in grpo_run_plan_v5p_8().rows}["sft_grads"]  # the same run, weight 0
    assert supervised.temporaries > plain.temporaries
