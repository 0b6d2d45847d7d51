"""AdaptVis decoding (METHODS §3): confidence-dependent scaling of attention to image tokens.

The rule (Chen et al. 2025, "Seeing but not believing"): decode with alpha = 1; the confidence p
is the max probability of the distribution that produces the first *answer* token; rows with
p < beta are decoded again with alpha_1 (< 1: smoothed attention on visual keys), rows with
p >= beta with alpha_2 (> 1: sharpened). Alpha multiplies the visual-key logits of the one query
row that produces the first answer token, in every layer and head.

Where the answer starts depends on the output format (`answer_tag_ids`):

* ``plain`` (short answers, the paper's setting): the first generated token. The row producing it
  is the prompt's last row in the prefill pass. Pass 1 decodes one token.
* ``trace`` (SIFThinker grammar, ``<think>..</think><answer>..</answer>``): the first token
  after the ``<answer>`` tag. The first generated token is the grammar tag ``<think>``, whose
  confidence says nothing about the answer. Two passes:

  1. decode the whole completion with alpha = 1 (the given sampling; greedy by default) and
     record each step's max probability; find the first complete ``<answer>`` tag; the
     confidence is the max probability of the next step (the first answer token, index k).
  2. decode again with the same key and alpha applied to the query row that produces token k
     (the decode step fed the tag's last token). Both passes compile to the same program and
     are identical before that row, so pass 2 reaches the same tag at the same step.

  A row whose pass-1 completion has no ``<answer>`` tag followed by a token falls back to the
  plain rule (confidence of the first token, prefill row scaled); `AdaptVisResult.answer_found`
  says which rows did.

The confidence is always the alpha = 1 pass's: it is what the threshold compared, and both
`python -m sif_jax.generate` and `python -m sif_jax.evaluate` report `AdaptVisResult.confidence`
(for greedy decoding they report `read_confidence` of the one decode, the same quantity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sif_jax.batch import ModelInputs, as_arrays
from sif_jax.infer.sampler import Samples, SamplingConfig, generate
from sif_jax.model.config import ModelConfig

Params = Any
ANSWER_TAG = "<answer>"
OUTPUT_FORMATS = ("plain", "trace")


@dataclasses.dataclass(frozen=True)
class AdaptVisConfig:
    """Defaults from the paper: alpha_1 = 0.5 (smooth), alpha_2 = 1.5 (sharpen), beta = 0.4."""

    alpha_low: float = 0.5
    alpha_high: float = 1.5
    threshold: float = 0.4

    def __post_init__(self) -> None:
        if self.alpha_low <= 0 or self.alpha_high <= 0:
            raise ValueError(f"AdaptVisConfig: alphas must be > 0, got {self.alpha_low}, {self.alpha_high}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"AdaptVisConfig.threshold={self.threshold}: must lie in (0, 1)")


def output_format_for_instruction(instruction: str | None) -> str:
    """'trace' for the SIFThinker instruction ('sif'), else 'plain' (see the module doc)."""
    return "trace" if instruction == "sif" else "plain"


def answer_tag_ids(tokenizer: Any, output_format: str) -> tuple[int, ...]:
    """The token ids after which the answer starts: () for 'plain', the encoded `<answer>` tag
    for 'trace'. Raises ValueError for another format or a tokenizer that encodes the tag to nothing."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r}: expected one of {OUTPUT_FORMATS}")
    if output_format == "plain":
        return ()
    ids = tuple(int(i) for i in tokenizer.encode(ANSWER_TAG))
    if not ids:
        raise ValueError(f"the tokenizer encodes {ANSWER_TAG!r} to no tokens")
    return ids


def answer_step(tokens: jax.Array, completion_mask: jax.Array, answer_tag: tuple[int, ...]
                ) -> tuple[jax.Array, jax.Array]:
    """Index of each row's first answer token and whether the format's rule found it.

    Args:
      tokens: int [N, T]; completion_mask: bool [N, T]; answer_tag: token ids (static), () = plain.

    Returns:
      (step int32 [N], found bool [N]): step = 1 + the index of the last token of the first
      complete `answer_tag` that a real token follows; 0 (the first token) for `answer_tag == ()`
      (found = True) or when there is no such tag (found = False).
    """
    n, steps = tokens.shape
    if not answer_tag:
        return jnp.zeros((n,), jnp.int32), jnp.ones((n,), bool)
    m = len(answer_tag)
    mask = completion_mask.astype(bool)
    if steps < m + 1:
        return jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool)
    ends = jnp.ones((n, steps - m), bool)  # ends[:, e]: the tag ends at token e + m - 1
    for j, tag_id in enumerate(answer_tag):
        ends = ends & (tokens[:, j : j + steps - m] == tag_id) & mask[:, j : j + steps - m]
    ends = ends & mask[:, m:]  # a real token follows the tag
    found = jnp.any(ends, axis=1)
    step = jnp.where(found, jnp.argmax(ends, axis=1) + m, 0).astype(jnp.int32)
    return step, found


def read_confidence(samples: Samples, answer_tag: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The AdaptVis confidence of a decode: (confidence float32 [N], step int32 [N], found bool [N]),
    confidence = samples.step_max_prob at `answer_step` (the max probability of the distribution
    that produced the first answer token)."""
    step, found = answer_step(samples.tokens, samples.completion_mask, answer_tag)
    confidence = jnp.take_along_axis(samples.step_max_prob, step[:, None], axis=1)[:, 0]
    return confidence, step, found


def choose_alpha(confidence: jax.Array, adaptvis: AdaptVisConfig) -> jax.Array:
    """float32 [N]: alpha_1 where the confidence is below the threshold, else alpha_2."""
    return jnp.where(confidence < adaptvis.threshold, adaptvis.alpha_low, adaptvis.alpha_high).astype(jnp.float32)


@flax.struct.dataclass
class AdaptVisResult:
    """samples: the pass-2 (scaled) decode. alpha float32 [N] used per row. confidence float32 [N]
    read from the alpha = 1 pass at `confidence_step` int32 [N] (index of the first answer token);
    answer_found bool [N]: the format's rule located the answer (False: first-token fallback)."""

    samples: Samples
    alpha: jax.Array
    confidence: jax.Array
    confidence_step: jax.Array
    answer_found: jax.Array


def generate_adaptvis(
    params: Params,
    inputs: ModelInputs | Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    config: ModelConfig,
    sampling: SamplingConfig,
    adaptvis: AdaptVisConfig,
    eos_token_id: int,
    pad_token_id: int,
    answer_tag: tuple[int, ...] = (),
) -> AdaptVisResult:
    """The two passes of the module doc; `answer_tag` from `answer_tag_ids` (() = plain format)."""
    batch = as_arrays(inputs)["input_ids"].shape[0]
    ones = jnp.ones((batch,), jnp.float32)
    zeros = jnp.zeros((batch,), jnp.int32)
    probe_sampling = sampling if answer_tag else dataclasses.replace(sampling, max_new_tokens=1)
    probe = generate(params, inputs, rng, config=config, sampling=probe_sampling, eos_token_id=eos_token_id,
                     pad_token_id=pad_token_id, visual_scale=ones, scale_step=zeros)
    confidence, step, found = read_confidence(probe, answer_tag)
    alpha = choose_alpha(confidence, adaptvis)
    samples = generate(params, inputs, rng, config=config, sampling=sampling, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id, visual_scale=alpha, scale_step=step)
    return AdaptVisResult(samples, alpha, confidence, step, found)
