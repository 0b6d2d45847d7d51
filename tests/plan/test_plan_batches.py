"""The planner's abstract batches for every family hold only real token ids (no libtpu needed)."""

import jax
import numpy as np
import pytest

from sif_jax.model.family import get_preset
from sif_jax.plan import abstract_batch
from sif_jax.run_config import build
from tests.plan.test_plan import small_config


@pytest.mark.parametrize("preset", ["tiny", "llava_1_5_tiny", "qwen3_vl_tiny"])
def test_abstract_batch_of_each_family_has_only_vocabulary_ids(preset, monkeypatch):
    import sif_jax.plan as plan_lib

    seen = {}
    real = plan_lib.family_of

    def spy(model):
        fam = real(model)
        collate = fam.collate_images

        class Spy:
            def __getattr__(self, name):
                return getattr(fam, name)

            def collate_images(self, model, ids, mask, images, patches):
                seen["ids"] = np.asarray(ids)
                return collate(model, ids, mask, images, patches)

        return Spy()

    monkeypatch.setattr(plan_lib, "family_of", spy)
    c = small_config()
    c.model = preset
    c.data.image_size = 336 if preset.startswith("llava") else 56
    c.data.length_buckets = (640,)
    c.data.patch_buckets = (4096,)
    model = get_preset(preset)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    batch = abstract_batch(build(c, check_files=False), model, mesh, 2, 640, sft=False)
    assert batch.inputs.input_ids.shape == (2, 640)
    ids = seen["ids"]
    assert ids.min() >= 0 and ids.max() < model.text.vocab_size
    assert (ids == model.image_token_id).sum() > 0
