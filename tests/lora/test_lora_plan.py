"""The planner follows the LoRA train state: adapter-only optimizer moments, no reference copy,
the loss and update programs take the adapters (and the frozen base)."""

import functools
import math
import os

import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
try:
    import libtpu  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("libtpu is not installed (pip install 'jax[tpu]')", allow_module_level=True)

from sif_jax import plan as plan_lib  # noqa: E402
from tests.plan.test_plan import small_config  # noqa: E402

PROGRAMS = ["score_reference", "grpo_loss_grads", "grpo_update", "lora_merge"]


def lora_config(rank: int = 4, base_dtype: str = ""):
    c = small_config((1, 4, 1))
    c.attention_backend = "xla"
    c.sft.steps = 0
    if rank:
        c.lora.rank = rank
        c.lora.alpha = 2.0 * rank
    if base_dtype:
        c.lora.base_dtype = base_dtype
    return c


@functools.cache  # both tests plan the plain rank-4 run (one xdist worker runs this whole file)
def lora_plan() -> plan_lib.Plan:
    return plan_lib.plan(lora_config(), "v5p-8", programs=PROGRAMS)


def test_lora_plan_compiles_and_its_state_is_the_base_plus_adapters():
    full = {r.name: r for r in plan_lib.plan(lora_config(rank=0), "v5p-8", programs=PROGRAMS[:3]).rows}
    result = lora_plan()
    assert result.failure() is None
    lora = {r.name: r for r in result.rows}
    assert sorted(lora) == sorted(PROGRAMS)
    # the update's arguments: full = params + reference + 2 Adam moments + grads; LoRA = base +
    # adapters + their moments + their grads, so well under half (the tiny preset: r=4 of 64)
    assert lora["grpo_update"].arguments < 0.45 * full["grpo_update"].arguments
    # the merge writes a params-sized transient: the reference scorer's params argument (the base)
    assert 0 < lora["lora_merge"].outputs < lora["score_reference"].arguments
    # the reference scores with the base (adapters off): no reference copy in the state
    assert lora["score_reference"].resident < full["score_reference"].resident
    assert all(math.isfinite(r.total) and r.total > 0 for r in result.rows)


def test_lora_plan_with_an_int8_base_keeps_the_quantised_base_resident():
    plain = {r.name: r for r in lora_plan().rows}
    result = plan_lib.plan(lora_config(base_dtype="int8"), "v5p-8", programs=PROGRAMS)
    assert result.failure() is None
    int8 = {r.name: r for r in result.rows}
    # the loss takes adapters + the quantised base: its adapted kernels at 1 byte (+ scales) not 4
    assert int8["grpo_loss_grads"].arguments < plain["grpo_loss_grads"].arguments
    # the reference scorer's argument is the quantised base (dequantised inside the program)
    assert int8["score_reference"].arguments < plain["score_reference"].arguments
    # the merge still writes the full-precision merged params (the sampler's), from a smaller base
    assert int8["lora_merge"].outputs == plain["lora_merge"].outputs
    assert int8["lora_merge"].arguments < plain["lora_merge"].arguments
