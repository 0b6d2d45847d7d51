"""Sampler throughput: sif_jax's jit sampler vs Hugging Face `generate`, same weights, one run.

    pip install torch==2.13.0 transformers      # HF side only; sif_jax needs neither
    python benchmarks/rollout.py --batch 8 --new-tokens 64

The preset (`--preset`, default tiny; `100m` is the `small` vision tower with a 12-layer,
768-wide text decoder, ~110M parameters) is initialised randomly, written with
`convert.hf.save_hf_checkpoint` and loaded by transformers, so both sides run the same weights on
the same built-in prompts (one image per prompt). Both decode for exactly `--new-tokens` tokens
(no EOS stop) with a KV cache: greedily (tokens compared), or with `--group G` as GRPO samples,
G completions per prompt at temperature 0.7 / top-p 0.9 (`--batch` rows = batch / G prompts;
sif_jax `generate(group_size=G)` prefills each prompt once, HF `generate(num_return_sequences=G)`
expands the prompts first; the draws differ, so only the speed is compared).
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


def base_100m():
    """~110M parameters: the `small` preset's vision tower and built-in tokenizer with a text decoder
    of 12 layers of width 768 (12 heads of 64, 4 KV heads, MLP 3072)."""
    import dataclasses

    from sif_jax.model.config import small

    config = small()
    text = dataclasses.replace(config.text, hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                               num_kv_heads=4)
    return dataclasses.replace(config, text=text, vision=dataclasses.replace(config.vision, out_hidden_size=768))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model preset (tiny, small, 100m; random weights)")
    parser.add_argument("--group", type=int, default=1, help="G > 1: sample G completions per prompt (GRPO)")
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
    if args.batch % args.group:
        parser.error(f"--batch {args.batch} is not a multiple of --group {args.group}")
    config = base_100m() if args.preset == "100m" else get_preset(args.preset)
    params = init_params(config, jax.random.key(0))
    prompts = args.batch // args.group
    source = pl.BuiltinSource(seed=0, size=prompts, scene_config=SceneConfig(height=args.image_size,
                                                                               width=args.image_size))
    pre = pl.Preprocessor(BuiltinTokenizer(), config)
    batch = pl.collate([pre(source[i]) for i in range(prompts)], config, length_buckets=(256, 512))
    ids, mask = batch.inputs.input_ids, batch.inputs.attention_mask
    pixels = [batch.inputs.pixel_values[r, : int(np.prod(batch.inputs.image_grid_thw[r]))] for r in range(prompts)]
    flat_pixels = np.concatenate(pixels)
    grids = batch.inputs.image_grid_thw
    steps = args.new_tokens

    # sif_jax: batched-image prompt, each prompt's row (and image) G times as GRPO collates them
    # (data.batching.collate(repeat=G)); jit prefill (once per prompt) + while_loop decode.
    g = args.group
    rows = np.repeat(np.arange(prompts), g)
    prompt = {k: jnp.asarray(v) for k, v in prepare_inputs(config, ids[rows], mask[rows],
                                                          np.concatenate([pixels[r] for r in rows]), grids[rows],
                                                          pad_patches_to=int(np.prod(grids, 1).max()),
                                                          batch_images=True).items()}
    greedy = g == 1
    sampling = SamplingConfig(max_new_tokens=steps, temperature=0.0 if greedy else 0.7, top_p=1.0 if greedy else 0.9)

    def ours():
        out = generate(params, prompt, jax.random.key(0), config=config, sampling=sampling, eos_token_id=-1,
                       pad_token_id=config.pad_token_id, group_size=g)
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
            sample = {} if greedy else dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                                            num_return_sequences=g)
            out = model.generate(**hf_inputs, max_new_tokens=steps, min_new_tokens=steps, eos_token_id=None,
                                 pad_token_id=config.pad_token_id, **({"do_sample": False} if greedy else sample))
        if hf_device.startswith("cuda"):
            torch.cuda.synchronize()
        return out[:, ids.shape[1]:].cpu().numpy()

    hf_tokens = hf()
    t_hf = _median_time(hf, args.repeats)
    agree = float((hf_tokens == ours_tokens).mean()) if greedy else None

    tokens = args.batch * steps
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__} ({hf_device}, {args.threads} threads), transformers "
          f"{transformers.__version__}")
    image_tokens = int((ids == config.image_token_id).sum(1)[0])
    count = sum(x.size for x in jax.tree.leaves(params)) / 1e6
    mode = "greedy" if greedy else f"G = {args.group} samples per prompt, temperature 0.7, top-p 0.9"
    print(f"{args.preset} preset ({count:.1f}M parameters), batch {args.batch}, prompt length {ids.shape[1]} (incl. "
          f"{image_tokens} image tokens), {steps} new tokens, {mode}, median of {args.repeats}")
    print("| sampler | seconds | tokens/s | vs HF |")
    print("|---|---|---|---|")
    print(f"| sif_jax `infer.sampler.generate` (jit) | {t_ours:.3f} | {tokens / t_ours:.0f} | {t_hf / t_ours:.2f}x |")
    print(f"| HF `generate` (sdpa) | {t_hf:.3f} | {tokens / t_hf:.0f} | 1.00x |")
    if greedy:
        print(f"greedy tokens identical: {agree:.1%}")


if __name__ == "__main__":
    main()
