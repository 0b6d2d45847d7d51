"""AdaptVis on LLaVA as in the paper's code: alpha scales the visual-key logits of the last prompt row,
in every layer and head, in the prefill pass only (plain answers)."""

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.infer.adaptvis import AdaptVisConfig, generate_adaptvis
from sif_jax.infer.sampler import SamplingConfig
from sif_jax.model import family


def test_adaptvis_scales_only_the_last_prompt_row_in_prefill(llava_loaded, llava_io):
    config, params = llava_loaded
    fam = family.family_of(config)
    inputs = fam.prepare_inputs(config, llava_io["input_ids"], llava_io["attention_mask"], llava_io["pixel_values"])
    prompt = {k: jnp.asarray(v) for k, v in fam.model_inputs(inputs).items()}
    steps = 4
    result = generate_adaptvis(params, prompt, jax.random.key(0), config=config,
                               sampling=SamplingConfig(max_new_tokens=steps, temperature=0.0),
                               adaptvis=AdaptVisConfig(threshold=0.5), eos_token_id=-1, pad_token_id=0)
    alpha = np.asarray(result.alpha)
    tokens = np.asarray(result.samples.tokens)
    # Oracle: one full forward over prompt + generated tokens with alpha on the last prompt row only.
    prompt_len = llava_io["input_ids"].shape[1]
    ids = np.concatenate([llava_io["input_ids"], tokens], axis=1)
    mask = np.concatenate([llava_io["attention_mask"], np.ones_like(tokens)], axis=1)
    scale = np.ones(ids.shape, np.float32)
    scale[:, prompt_len - 1] = alpha
    logits, _ = family.forward(params, config, ids, mask, llava_io["pixel_values"], visual_scale=jnp.asarray(scale))
    oracle = np.asarray(logits)[:, prompt_len - 1 : prompt_len - 1 + steps].copy()
    oracle[..., config.image_token_id] = -np.inf  # the sampler never emits the image token
    greedy = np.argmax(oracle, axis=-1)
    np.testing.assert_array_equal(tokens, greedy)
    # and the scaling matters: alpha != 1 changes the first-token distribution
    unscaled, _ = family.forward(params, config, llava_io["input_ids"], llava_io["attention_mask"],
                                 llava_io["pixel_values"])
    assert np.all(alpha != 1.0)
    assert np.abs(np.asarray(logits)[:, prompt_len - 1] - np.asarray(unscaled)[:, -1]).max() > 1e-4
    # the confidence is the alpha = 1 pass's max probability of the first token (the sampler never
    # emits the image token, so its logit is -inf)
    first = np.asarray(unscaled)[:, -1].copy()
    first[:, config.image_token_id] = -np.inf
    probs = jax.nn.softmax(first, axis=-1)
    np.testing.assert_allclose(np.asarray(result.confidence), np.max(probs, axis=-1), atol=1e-5)
