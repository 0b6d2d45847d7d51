"""GRPO-SIF on Qwen2.5-VL-7B at the released recipe's sizes, FSDP over every chip.

    python -m sif_jax.train --config=configs/grpo_7b.py \
        --config.init_checkpoint=/path/to/Qwen2.5-VL-7B-Instruct \
        --config.tokenizer=/path/to/Qwen2.5-VL-7B-Instruct/tokenizer.json
    python -m sif_jax.plan --config=configs/grpo_7b.py --topology=v5p-8   # will it fit? (no TPU needed)

G=8 samples per prompt, one group (8 rows) per micro-batch, completions of up to 2048 tokens, an
896 px image (64 x 64 patches = 1024 visual tokens after the 2x2 merge), the frozen KL reference
(beta 0.04), sampling at temperature 1 (METHODS §1.4). The run starts from the released checkpoint,
so there is no SFT warm-up here. Prompts are ~1024 image + ~150 text tokens: one 1280 bucket.
"""

import ml_collections

from configs import grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/grpo.py (`arg` chooses its variant, see there) at the 7B recipe's sizes."""
    c = grpo.get_config(arg)
    c.model = "qwen2_5_vl_7b"
    c.workdir = "workdir/grpo_7b"
    c.data.image_size = 896
    c.data.patch_buckets = (4096,)
    c.data.length_buckets = (1280,)
    c.sft.steps = 0
    c.grpo.steps = 500
    c.grpo.group_size = 8
    c.grpo.prompts_per_step = 8
    c.grpo.micro_batch_prompts = 1
    c.grpo.learning_rate = 1e-5
    c.grpo.beta = 0.04
    c.grpo.max_new_tokens = 2048
    c.grpo.temperature = 1.0
    c.grpo.top_p = 1.0
    # Released sizes: scan over layers (compiles in minutes, not ~16) and per-layer remat, which
    # keeps only each layer's input for the backward (see the planner tables in benchmarks/RESULTS.md).
    c.scan_layers = True
    c.remat_policy = "full"
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    return c
