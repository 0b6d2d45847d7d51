"""Jit-compiled generation: prefill, then a `lax.while_loop` of KV-cached decode steps.

Params are traced arguments, so one compiled program serves every training step; the loop exits
early once every row has produced EOS. Rows of a group are contiguous copies of one prompt
(`batching.collate(..., repeat=G)`); with `group_size=G` the vision tower and the prefill run once per
prompt and its KV cache is copied to the G rows (`groups`). Top-k / top-p sample from a
`lax.top_k` candidate set (`candidate_logits`), not a sort of the vocabulary.

Completions are text: the vision control ids of the model config (image pad, video pad, vision
start / end; `vision_control_ids`) get logit -inf before every sampling or argmax step, so the
sampler never emits them. Image positions come from the prompt alone (the KV cache's `visual`
slots), and the scoring pass (`scoring.score_inputs`) reads them the same way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sif_jax.batch import ModelInputs, as_arrays
from sif_jax.infer.groups import repeat_cache, repeat_rows, shares_prompts, unique_prompts
from sif_jax.model.cache import decode_step, prefill
from sif_jax.model.config import ModelConfig

Params = Any
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off.

    candidates: top-p and top-k run on the `candidates` (at least top_k + 1) largest logits of each row
      (`jax.lax.top_k`) when they are under a quarter of the vocabulary; the result is that of the
      whole vocabulary whenever the kept set fits inside them (`candidate_logits`), and a step where
      some row's does not fit falls back to the whole vocabulary for the batch. The whole-vocabulary
      path sorts nothing (`nucleus_logits`, O(32 V)); it is also the faster one for small
      vocabularies. 0 = always the whole vocabulary.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    candidates: int = 256

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: must lie in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: must be >= 0")
        if self.candidates < 0:
            raise ValueError(f"SamplingConfig.candidates={self.candidates}: must be >= 0")


@flax.struct.dataclass
class Samples:
    """One generation of N rows of up to T = max_new_tokens tokens.

    tokens: int32 [N, T] (pad after EOS). completion_mask: bool [N, T] (up to and including EOS).
    logprobs: float32 [N, T] of each sampled token under the sampling distribution.
    step_max_prob: float32 [N, T] max probability of the distribution each token was drawn from
      (temperature-scaled, before top-k / top-p; 0 where masked). AdaptVis reads its confidence
      from it (`adaptvis.read_confidence`).
    first_token_prob: float32 [N] = step_max_prob[:, 0].
    truncated: bool [N] the row reached max_new_tokens without EOS (it did not finish).
    """

    tokens: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    first_token_prob: jax.Array
    step_max_prob: jax.Array
    truncated: jax.Array


def vision_control_ids(config: ModelConfig) -> tuple[int, ...]:
    """The ids a completion must never hold: image pad, video pad, vision start and end (from the
    model config), those inside the vocabulary, sorted."""
    ids = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}
    return tuple(sorted(i for i in ids if 0 <= i < config.text.vocab_size))


def ban_tokens(logits: jax.Array, ids: tuple[int, ...]) -> jax.Array:
    """logits [N, V] (float32) with the columns `ids` set to -inf."""
    logits = logits.astype(jnp.float32)
    if not ids:
        return logits
    return logits.at[:, jnp.asarray(ids)].set(-jnp.inf)


def _temperature_scaled(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """float32 logits / T (unchanged when greedy, T = 0)."""
    z = logits.astype(jnp.float32)
    return z / sampling.temperature if sampling.temperature > 0 else z


def max_prob(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """float32 [N]: the largest probability of softmax(logits / T) (T = 1 when greedy) for
    logits [N, V]; top-k / top-p are not applied."""
    z = _temperature_scaled(logits, sampling)
    return jnp.exp(jnp.max(z, axis=-1) - jax.nn.logsumexp(z, axis=-1))


def process_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Temperature, top-k and top-p applied to logits [N, V] (float32); masked entries -1e30.

    The definition by a stable sort of the vocabulary: the oracle of `nucleus_logits` (which the
    sampler uses, without the sort) and of `candidate_logits`."""
    logits = _temperature_scaled(logits, sampling)
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token if the mass strictly before it is below top_p (the top token always stays)
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, NEG_INF)
    return logits


def _order_keys(x: jax.Array) -> jax.Array:
    """uint32 keys ordered as the float32 values `x`, equal keys for equal values (-0.0 = +0.0 as
    a sort sees them); no NaN."""
    x = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def nucleus_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """`process_logits` without sorting the vocabulary: the same kept set, found by bisection.

    Top-p keeps a token when the mass strictly before it in descending order (ties by lower id, as
    the stable sort) is below top_p. That mass is monotone in the logit, so the kept set is every
    token above a threshold logit t plus a prefix (by id) of the tokens equal to t; t is found by
    bisecting the 2^32 float32 values in order (32 passes of an O(V) masked sum, no sort, no
    scatter) and the ties at t by one cumulative sum. Top-k's k-th largest logit comes from
    `lax.top_k` by a reduction (a slice of its output makes XLA:CPU sort the whole row).
    Equal to `process_logits` (tested) except where the mass before a token is within float
    rounding of top_p: the mass above the threshold is summed in vocabulary order here and in
    descending order there, so such a boundary token can be kept by one and not the other.

    Args:
      logits: [N, V] raw logits (banned ids at -inf or -1e30).

    Returns:
      float32 [N, V]: temperature-scaled logits, -1e30 where top-k / top-p drop them.
    """
    z = _temperature_scaled(logits, sampling)
    vocab = z.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = jnp.min(jax.lax.top_k(z, sampling.top_k)[0], axis=-1, keepdims=True)
        z = jnp.where(z < kth, NEG_INF, z)
    if sampling.top_p >= 1.0:
        return z
    # Probabilities as `process_logits` forms them (softmax), compared with top_p as it does, so
    # ties (summed in id order, as the stable sort orders them) round the same way.
    mass = jax.nn.softmax(z, axis=-1)  # 0 where dropped
    target = jnp.full(z.shape[:1], sampling.top_p, jnp.float32)
    keys = _order_keys(z)

    def mass_above(k: jax.Array) -> jax.Array:  # [N]: the mass of the tokens whose key exceeds k [N]
        return jnp.sum(jnp.where(keys > k[:, None], mass, 0.0), axis=-1)

    def bisect(_, bounds):  # the smallest key k with mass_above(k) < target lies in [lo, hi]
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = mass_above(mid) < target
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    rows = z.shape[0]
    lo = jnp.zeros((rows,), jnp.uint32)
    hi = jnp.full((rows,), 0xFFFFFFFF, jnp.uint32)
    _, threshold = jax.lax.fori_loop(0, 32, bisect, (lo, hi))
    tie = keys == threshold[:, None]
    tie_mass = jnp.where(tie, mass, 0.0)
    before = mass_above(threshold)[:, None] + jnp.cumsum(tie_mass, axis=-1) - tie_mass
    keep = (keys > threshold[:, None]) | (tie & (before < target[:, None]))
    return jnp.where(keep, z, NEG_INF)


def candidate_logits(logits: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Temperature, top-k and top-p on the C largest logits of each row, without a vocabulary sort.

    C = max(sampling.candidates, top_k + 1), at most V. The probabilities of the nucleus rule are
    those of the whole (temperature-scaled, top-k-masked) vocabulary: exp(z - max) / the sum over
    the kept tokens (with top-k, the kept candidates; without, an O(V) reduction, no sort),
    accumulated in descending order as in `process_logits`.

    Args:
      logits: [N, V] raw logits (banned ids at -inf).

    Returns:
      (processed float32 [N, C]: the candidates' logits as `process_logits` gives them, -1e30 where
      dropped; ids int32 [N, C] their vocabulary ids, descending by logit, ties by lower id as the
      full stable sort; fits bool [N]: the kept set lies inside the candidates, so `processed`
      scattered to ids, -1e30 elsewhere, equals `process_logits(logits)`; where False the caller
      must use the whole vocabulary, `nucleus_logits`). With top-k a row fits when its last
      candidate's logit is below the k-th largest (no tie reaches past the candidates; top-p then
      only drops candidates); without, when top-p drops its last candidate (the mass before it
      already reaches top_p, and the mass only grows further down).
    """
    z = _temperature_scaled(logits, sampling)
    vocab = z.shape[-1]
    count = min(max(sampling.candidates, sampling.top_k + 1), vocab)
    values, ids = jax.lax.top_k(z, count)
    keep = jnp.ones(values.shape, bool)
    if 0 < sampling.top_k < vocab:
        # Every kept token is a candidate iff the last candidate is below the k-th largest logit.
        # (Reductions rather than slices of `values`: a slice of top_k's output makes XLA:CPU
        # lower it as a full sort.)
        first_k = jnp.arange(count) < sampling.top_k
        kth = jnp.min(jnp.where(first_k, values, jnp.inf), axis=-1, keepdims=True)
        keep = values >= kth
        fits = jnp.min(values, axis=-1) < kth[:, 0]
        top = jnp.max(values, axis=-1, keepdims=True)
        total = jnp.sum(jnp.where(keep, jnp.exp(values - top), 0.0), axis=-1, keepdims=True)
    else:
        fits = jnp.zeros(values.shape[:1], bool)
        # max and sum over the vocabulary, independent of top_k's output (XLA:CPU then keeps its fast TopK)
        top = jnp.max(z, axis=-1, keepdims=True)
        total = jnp.sum(jnp.exp(z - top), axis=-1, keepdims=True)
    if sampling.top_p < 1.0:
        probs = jnp.where(keep, jnp.exp(values - top), 0.0) / total
        nucleus = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        keep = keep & nucleus
        if not 0 < sampling.top_k < vocab:
            fits = ~nucleus[:, -1]
    if count == vocab:
        fits = jnp.ones_like(fits)
    return jnp.where(keep, values, NEG_INF), ids.astype(jnp.int32), fits


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` for x [N, V] without NaN (the lowest index among maxima). Up to
    V = 65536 as a max and a min over an index mask: XLA:CPU runs argmax's variadic (value, index)
    reduce 4-5x slower at [32, 1024..65536]; at Qwen's 151,936 the two passes are slower than one
    (`benchmarks/grpo_sharing.py vocab`)."""
    if x.shape[-1] > 65536:
        return jnp.argmax(x, axis=-1)
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == top, index, x.shape[-1]), axis=-1)


def categorical(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """`jax.random.categorical(rng, logits, axis=-1)` for logits [N, V]: the same Gumbel-max draw
    (same key, same token), with `first_argmax` for the argmax."""
    return first_argmax(jax.random.gumbel(rng, logits.shape, logits.dtype) + logits)


def _sample_full(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    processed = nucleus_logits(logits, sampling)
    logp = jax.nn.log_softmax(processed, axis=-1)
    if sampling.temperature == 0:
        token = first_argmax(logits)
    else:
        token = categorical(rng, processed)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def _sample_candidates(processed: jax.Array, ids: jax.Array, rng: jax.Array,
                       sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    logp = jax.nn.log_softmax(processed, axis=-1)
    if sampling.temperature == 0:
        pick = jnp.zeros(ids.shape[:1], jnp.int32)  # the largest logit, lowest id among ties, as argmax
    else:
        pick = categorical(rng, processed)
    token = jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0]
    return token.astype(jnp.int32), jnp.take_along_axis(logp, pick[:, None], axis=-1)[:, 0]


def sample_token(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """(token int32 [N], its log-probability float32 [N]) from raw logits [N, V].

    With top-p < 1 or top-k on, `sampling.candidates` > 0 and 4 * max(candidates, top_k + 1) < V,
    the draw runs on the candidate set (`candidate_logits`); if any row's kept set does not fit,
    the whole batch takes the whole vocabulary (`nucleus_logits`, `lax.cond`). Both give the distribution of
    `process_logits`; a given key draws different tokens on the two paths (categorical over
    [N, C] vs [N, V]). Greedy is exact on both.
    """
    vocab = logits.shape[-1]
    filtered = sampling.top_p < 1.0 or 0 < sampling.top_k < vocab
    count = max(sampling.candidates, sampling.top_k + 1)  # as candidate_logits takes them
    if not filtered or sampling.candidates == 0 or 4 * count >= vocab:
        return _sample_full(logits, rng, sampling)
    processed, ids, fits = candidate_logits(logits, sampling)
    return jax.lax.cond(jnp.all(fits), lambda: _sample_candidates(processed, ids, rng, sampling),
                        lambda: _sample_full(logits, rng, sampling))


@functools.partial(jax.jit, static_argnames=("config", "sampling", "eos_token_id", "pad_token_id", "group_size"))
def generate(
    params: Params,
    inputs: ModelInputs | Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    eos_token_id: int,
    pad_token_id: int,
    visual_scale: jax.Array | None = None,
    scale_step: jax.Array | None = None,
    group_size: int = 1,
) -> Samples:
    """Samples up to `sampling.max_new_tokens` tokens per row (never a `vision_control_ids` id).

    Args:
      params: model params (traced: no recompilation when they change).
      inputs: left-padded prompt batch: a `ModelInputs` (`data.batching.collate(...).inputs`) or the
        family's `prepare_inputs` dict (every row ends with a real token, so the last position's
        logits start every row).
      rng: PRNG key.
      visual_scale: float [N] AdaptVis alpha for the one query row that produces completion token
        `scale_step` (METHODS §3: only the row that produces the first answer token is scaled);
        None = off.
      scale_step: int [N] which completion token's producing row is scaled: 0 = the prompt's last
        row in the prefill pass (the paper's choice), k > 0 = the decode step fed token k - 1.
        None = 0 for every row.
      group_size: G > 1 declares rows [g * G, (g + 1) * G) copies of one prompt (`groups`): the
        vision tower and the prefill run once per prompt (`groups.unique_prompts`: text only, the Qwen
        families' batched-image layout or LLaVA's images; other families prefill every row) and the prompt's
        cache is copied to its G rows; the samples equal those of group_size=1 for the same key.
        Not with `visual_scale`.

    Returns:
      `Samples`; `truncated` marks rows that used all max_new_tokens without emitting EOS.

    Raises:
      ValueError: `visual_scale` with group_size > 1 (a per-row alpha changes the prompt's cache),
        or the conditions of `groups.unique_prompts`.
    """
    inputs = as_arrays(inputs)
    steps = sampling.max_new_tokens
    banned = vision_control_ids(config)
    batch, prompt_len = inputs["input_ids"].shape
    scale_rows = None
    if visual_scale is not None:
        visual_scale = jnp.asarray(visual_scale, jnp.float32)
        scale_step = jnp.zeros((batch,), jnp.int32) if scale_step is None else jnp.asarray(scale_step, jnp.int32)
        first_alpha = jnp.where(scale_step == 0, visual_scale, 1.0)
        scale_rows = jnp.ones((batch, prompt_len), jnp.float32).at[:, -1].set(first_alpha)
    if group_size > 1 and visual_scale is not None:
        raise ValueError(f"generate: visual_scale needs group_size=1 (got {group_size})")
    if not shares_prompts(config):
        group_size = 1  # this family prefills every row (same samples, G times the prompt work)
    if group_size > 1:
        inputs = unique_prompts(inputs, group_size, config)
    logits, cache, _ = prefill(params, config, inputs, prompt_len + steps, visual_scale=scale_rows,
                               last_logits_only=True)
    cache = repeat_cache(cache, group_size)
    if not config.scan_layers:
        cache = cache.per_layer()  # each layer's cache written in place by the decode loop
    first_logits = ban_tokens(repeat_rows(logits[:, -1], group_size), banned)
    state = dict(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits=first_logits,
        tokens=jnp.full((batch, steps), pad_token_id, jnp.int32),
        logprobs=jnp.zeros((batch, steps), jnp.float32),
        max_prob=jnp.zeros((batch, steps), jnp.float32),
        mask=jnp.zeros((batch, steps), bool),
        done=jnp.zeros((batch,), bool),
        rng=rng,
    )

    def cond(s):
        return (s["step"] < steps) & ~jnp.all(s["done"])

    def body(s):
        rng, key = jax.random.split(s["rng"])
        token, logp = sample_token(s["logits"], key, sampling)
        live = ~s["done"]
        token = jnp.where(live, token, pad_token_id)
        step = s["step"]
        tokens = s["tokens"].at[:, step].set(token)
        logprobs = s["logprobs"].at[:, step].set(jnp.where(live, logp, 0.0))
        max_probs = s["max_prob"].at[:, step].set(jnp.where(live, max_prob(s["logits"], sampling), 0.0))
        mask = s["mask"].at[:, step].set(live)
        done = s["done"] | (token == eos_token_id)
        step_scale = None
        if visual_scale is not None:
            step_scale = jnp.where(scale_step == step + 1, visual_scale, 1.0)[:, None]
        next_logits, cache, _ = decode_step(params, config, token, s["cache"], visual_scale=step_scale)
        return dict(step=step + 1, cache=cache, logits=ban_tokens(next_logits, banned), tokens=tokens,
                    logprobs=logprobs, max_prob=max_probs, mask=mask, done=done, rng=rng)

    state = jax.lax.while_loop(cond, body, state)
    return Samples(state["tokens"], state["mask"], state["logprobs"], max_prob(first_logits, sampling),
                   state["max_prob"], ~state["done"])

