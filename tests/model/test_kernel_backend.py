"""The model with the Pallas kernel backend (TPU interpret mode on CPU) matches the reference."""

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.convert.hf import load_hf_checkpoint
from sif_jax.model.vlm import Qwen25VL, model_inputs, prepare_inputs


def test_pallas_tpu_backend_matches_reference(hf_tiny_dir, hf_tiny_io):
    config, params = load_hf_checkpoint(hf_tiny_dir)
    inputs = model_inputs(prepare_inputs(config, hf_tiny_io["input_ids"], hf_tiny_io["attention_mask"],
                                         hf_tiny_io["pixel_values"], hf_tiny_io["image_grid_thw"]))
    visual = hf_tiny_io["input_ids"] == config.image_token_id
    region = jnp.asarray(visual & (np.arange(visual.shape[1]) % 3 == 0))
    outputs = {}
    for backend in ("reference", "pallas_tpu"):
        model = Qwen25VL(config.replace(attention_backend=backend))
        outputs[backend] = model.apply({"params": params}, **inputs, region_mask=region,
                                       visual_scale=jnp.full(visual.shape, 1.3), return_attention_mass=(1, 2))
    valid = hf_tiny_io["attention_mask"].astype(bool)
    ref_logits, ref_aux = outputs["reference"]
    ker_logits, ker_aux = outputs["pallas_tpu"]
    np.testing.assert_allclose(np.asarray(ker_logits)[valid], np.asarray(ref_logits)[valid], atol=1e-4)
    for layer in (1, 2):
        for kind in ("region", "visual"):
            ref = np.asarray(ref_aux["attention_mass"][layer][kind]).transpose(0, 2, 1)[valid]
            ker = np.asarray(ker_aux["attention_mass"][layer][kind]).transpose(0, 2, 1)[valid]
            np.testing.assert_allclose(ker, ref, atol=1e-5)
    assert jax.tree.structure(ref_aux) == jax.tree.structure(ker_aux)
