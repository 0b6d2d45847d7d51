"""Sampler throughput: sif_jax's jit sampler vs Hugging Face `generate`, same weights, one run.

    pip install torch==2.13.0 transformers      # HF side only; sif_jax needs neither
    python benchmarks/rollout.py --batch 8 --new-tokens 64

The preset (`--preset`, default tiny) is initialised randomly, written with
`convert.hf.save_hf_checkpoint` and loaded by transformers, so both sides run the same weights on
the same built-in prompts (one image per prompt). Both decode greedily for exactly `--new-tokens`
tokens (no EOS stop) with a KV cache.
Times are medians over `--repeats` runs after one warm-up run (which includes jit compilation
for sif_jax). Prints a markdown table; the ratio is only meaningful measured side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model preset (tiny, small; random weights)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hf-device", default=None, help="torch device for HF (default: cuda if available)")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import Qwen2_5_VLForConditionalGeneration

    from sif_jax.convert.hf import save_hf_checkpoint
    from sif_jax.data import pipeline as pl
    from sif_jax.data.scenes import SceneConfig
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.infer.sampler import SamplingConfig, generate
    from sif_jax.model.config import get_preset
    from sif_jax.model.vlm import init_params, prepare_inputs

    torch.set_num_threads(args.threads)
    config = get_preset(args.preset)
    params = init_params(config, jax.random.key(0))
    source = pl.BuiltinSource(seed=0, size=args.batch, scene_config=SceneConfig(height=args.image_size,
                                                                                  width=args.image_size))
    pre = pl.Preprocessor(BuiltinTokenizer(), config)
    batch = pl.collate([pre(source[i]) for i in range(args.batch)], config, length_buckets=(256, 512))
    ids, mask = batch.inputs.input_ids, batch.inputs.attention_mask
    flat_pixels = np.concatenate([batch.inputs.pixel_values[r, : int(np.prod(batch.inputs.image_grid_thw[r]))]
                                  for r in range(args.batch)])
    grids = batch.inputs.image_grid_thw
    steps = args.new_tokens

    # sif_jax: batched-image prompt, jit prefill + while_loop decode.
    prompt = {k: jnp.asarray(v) for k, v in prepare_inputs(config, ids, mask, flat_pixels, grids,
                                                          pad_patches_to=int(np.prod(grids, 1).max()),
                                                          batch_images=True).items()}
    sampling = SamplingConfig(max_new_tokens=steps, temperature=0.0)

    def ours():
        out = generate(params, prompt, jax.random.key(0), config=config, sampling=sampling, eos_token_id=-1,
                       pad_token_id=config.pad_token_id)
        return np.asarray(out.tokens)

    ours_tokens = ours()
    t_ours = _median_time(ours, args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(config, params, tmp)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp, attn_implementation="sdpa").eval()
    hf_device = args.hf_device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(hf_device)
    hf_inputs = dict(
        input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask.astype(np.int64)),
        pixel_values=torch.from_numpy(flat_pixels), image_grid_thw=torch.from_numpy(grids.astype(np.int64)),
        mm_token_type_ids=torch.from_numpy((ids == config.image_token_id).astype(np.int64)),
    )
    hf_inputs = {name: x.to(hf_device) for name, x in hf_inputs.items()}

    def hf():
        with torch.no_grad():
            out = model.generate(**hf_inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                 eos_token_id=None, pad_token_id=config.pad_token_id)
        if hf_device.startswith("cuda"):
            torch.cuda.synchronize()
        return out[:, ids.shape[1]:].cpu().numpy()

    hf_tokens = hf()
    t_hf = _median_time(hf, args.repeats)
    agree = float((hf_tokens == ours_tokens).mean())

    tokens = args.batch * steps
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__} ({hf_device}, {args.threads} threads), transformers "
          f"{transformers.__version__}")
    image_tokens = int((ids == config.image_token_id).sum(1)[0])
    print(f"{args.preset} preset, batch {args.batch}, prompt length {ids.shape[1]} (incl. {image_tokens} image "
          f"tokens), {steps} new tokens, greedy, median of {args.repeats}")
    print("| sampler | seconds | tokens/s | vs HF |")
    print("|---|---|---|---|")
    print(f"| sif_jax `infer.sampler.generate` (jit) | {t_ours:.3f} | {tokens / t_ours:.0f} | {t_hf / t_ours:.2f}x |")
    print(f"| HF `generate` (sdpa) | {t_hf:.3f} | {tokens / t_hf:.0f} | 1.00x |")
    print(f"greedy tokens identical: {agree:.1%}")


if __name__ == "__main__":
    main()
