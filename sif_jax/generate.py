"""`python -m sif_jax.generate`: answer one question about one image, and show where the model looked.

    python -m sif_jax.generate --checkpoint=workdir/grpo --image=photo.png \
        --question="Is the red cube to the left of the blue sphere?" [--adaptvis] [--heatmap=out.png]

Prints the interleaved trace (`<think><area>..</area><text>..</text>..</think><answer>..</answer>`),
the answer, whether the trace follows the SIFThinker grammar, and the answer confidence (the max
probability of the first answer token's distribution in the alpha = 1 decode: the first token for
plain answers, the token after `<answer>` for `--instruction=sif` traces; `rl.adaptvis`) and, with
`--adaptvis`, the alpha AdaptVis chose from it (METHODS §3).

`--heatmap=out.png` draws, over the image as the model saw it (smart-resized), the attention mass
each visual token (one 28x28 px cell for Qwen2.5-VL) received, averaged over the decoder layers
`--layers` (default -1, the last; SAYO's choice), all heads, and **all generated completion
tokens** (each token's own query row in a teacher-forced pass over prompt + completion, EOS
included — the same rows and reduction as the TAS scoring pass), plus the boxes of the final
`<area>` (solid) and of the earlier areas (dashed, lighter).

How the per-token map is computed (`visual_attention_map`): the region-attention kernel returns,
per query row, the attention mass on the keys of a `region_mask`. The vision tower and embedding
run once; the decoder then runs on K copies of the sequence whose region masks are one-hot on the
K visual tokens (in chunks of `--heatmap_chunk` copies), so copy j's region mass is exactly the
probability on visual key j, through the same kernel and numerics as training. That is K/chunk
extra decoder passes (K = 64 for a 224 px image) — fine for one image, never the attention
matrix. Summed over the tokens the map equals the visual mass of the scoring pass (tested).
The teacher-forced pass applies no AdaptVis scaling: it shows the model's own attention while it
wrote the completion AdaptVis chose.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sif_jax.model.config import ModelConfig
from sif_jax.model.family import family_of
from sif_jax.rl.scoring import score_inputs

Params = Any


# ---------------------------------------------------------------------------- per-token attention


@functools.partial(jax.jit, static_argnames=("config",))
def _embed(params: Params, inputs: dict[str, jax.Array], *,
           config: ModelConfig) -> tuple[jax.Array, jax.Array | None]:
    """(the decoder's input embeddings [B, L, hidden], DeepStack features [levels, B, L, hidden] or None).

    Families whose `embed` returns a pair (Qwen3-VL: embeddings and DeepStack levels) give both; the
    others give their embeddings and None."""
    family = family_of(config)
    module = family.module(config)
    images = {k: v for k, v in family.model_inputs(inputs).items() if k not in ("attention_mask", "positions")}
    out = module.apply({"params": params}, **images, method=type(module).embed)
    return out if isinstance(out, tuple) else (out, None)


def _decoder_masses(module: Any, embeddings, positions, kv_valid, visual_mask, region_mask, layers, deepstack=None):
    extra = {} if deepstack is None else {"deepstack": deepstack}
    _, aux = module.text(embeddings, positions, kv_valid=kv_valid, visual_mask=visual_mask, region_mask=region_mask,
                         mass_layers=layers, return_hidden=True, **extra)
    return aux["attention_mass"]


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def _one_hot_masses(params: Params, embeddings: jax.Array, positions: jax.Array, kv_valid: jax.Array,
                    visual_mask: jax.Array, region_masks: jax.Array, deepstack: jax.Array | None = None, *,
                    config: ModelConfig, layers: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """One sequence ([1, L, ...]; DeepStack [levels, 1, L, hidden]) run as K copies, copy k with region
    mask `region_masks[k]`. Returns region mass [K, L] and visual mass [K, L], averaged over `layers`
    and heads."""
    k, length = region_masks.shape
    rep = lambda x: jnp.broadcast_to(x, (k, *x.shape[1:]))
    if deepstack is not None:
        deepstack = jnp.broadcast_to(deepstack, (deepstack.shape[0], k, *deepstack.shape[2:]))
    masses = family_of(config).module(config).apply(
        {"params": params}, rep(embeddings), jnp.broadcast_to(positions, (positions.shape[0], k, length)),
        rep(kv_valid),
        rep(visual_mask), region_masks, layers, deepstack, method=_decoder_masses)
    region = jnp.mean(jnp.stack([masses[i]["region"] for i in layers]), axis=(0, 2))
    visual = jnp.mean(jnp.stack([masses[i]["visual"] for i in layers]), axis=(0, 2))
    return region, visual


def visual_attention_map(
    params: Params,
    prompt: dict[str, Any],
    completion: jax.Array,
    completion_mask: jax.Array,
    *,
    config: ModelConfig,
    layers: Sequence[int] = (-1,),
    chunk: int = 16,
) -> tuple[np.ndarray, float]:
    """Attention each visual token received, averaged over `layers`, heads and the completion tokens.

    Args:
      prompt: a one-row prompt batch (`batching.collate`); completion int [1, T]; completion_mask bool [1, T].
      layers: decoder layers (negative = from the end).
      chunk: copies of the sequence per decoder pass.

    Returns:
      (heat float32 [N] over the row's visual tokens in raster order, the mean visual mass of the
      same rows — equal to heat.sum() up to float error).
    """
    if np.shape(prompt["input_ids"])[0] != 1:
        raise ValueError("visual_attention_map: expects a one-row prompt batch")
    layers = tuple(sorted({int(i) % config.text.num_layers for i in layers}))
    prompt = family_of(config).model_inputs(prompt)
    inputs = score_inputs(prompt, jnp.asarray(completion), jnp.asarray(completion_mask),
                          image_token_id=config.image_token_id, config=config)
    ids = np.asarray(inputs["input_ids"])
    valid = np.asarray(inputs["attention_mask"]).astype(bool)
    is_visual = np.asarray(inputs["image_mask"]) & valid  # the prompt's image positions only
    visual_positions = np.flatnonzero(is_visual[0])
    prompt_len = np.shape(prompt["input_ids"])[1]
    mask = np.asarray(completion_mask, bool)[0]
    rows = prompt_len + np.flatnonzero(mask)
    if len(visual_positions) == 0 or len(rows) == 0:
        return np.zeros(len(visual_positions), np.float32), 0.0
    embeddings, deepstack = _embed(params, inputs, config=config)
    length = ids.shape[1]
    chunk = max(1, min(chunk, len(visual_positions)))
    heat = np.zeros(len(visual_positions), np.float64)
    visual_mass = 0.0
    for start in range(0, len(visual_positions), chunk):
        part = visual_positions[start:start + chunk]
        one_hot = np.zeros((chunk, length), bool)
        one_hot[np.arange(len(part)), part] = True  # padding copies: an all-false mask
        region, visual = _one_hot_masses(params, embeddings, inputs["positions"], jnp.asarray(valid),
                                         jnp.asarray(is_visual), jnp.asarray(one_hot), deepstack, config=config,
                                         layers=layers)
        region = np.asarray(region, np.float64)
        heat[start:start + len(part)] = region[: len(part)][:, rows].mean(axis=1)
        visual_mass = float(np.asarray(visual, np.float64)[0, rows].mean())
    return heat.astype(np.float32), visual_mass


# ---------------------------------------------------------------------------- text and boxes


_AREA = re.compile(r"<area>(.*?)</area>", re.DOTALL)


def all_areas(text: str) -> list[list[tuple[float, float, float, float]]]:
    """The boxes of every `<area>` that parses, even when the rest of the trace does not follow
    the grammar (coordinates clipped to [0, 1], degenerate boxes dropped)."""
    from sif_jax.data.format import AreaJSONError, check_format, unique_keys

    parsed = check_format(text)
    if parsed.ok:
        return [[b for b, _ in area] for area in parsed.areas]
    out = []
    for raw in _AREA.findall(text):
        try:
            items = json.loads(raw, object_pairs_hook=unique_keys)  # a repeated key is no area
        except (ValueError, RecursionError, AreaJSONError):
            continue
        boxes = []
        for item in items if isinstance(items, list) else []:
            box = item.get("bbox_2d") if isinstance(item, dict) else None
            if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
                x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
                if x2 > x1 and y2 > y1:
                    boxes.append((x1, y1, x2, y2))
        if boxes:
            out.append(boxes)
    return out


def pretty_trace(text: str) -> str:
    """One `<area>` / `<text>` per line, indented inside `<think>`."""
    out = text
    for tag, prefix in (("<area>", "\n  "), ("<text>", "\n  "), ("</think>", "\n"), ("<answer>", "\n")):
        out = out.replace(tag, prefix + tag)
    return "\n".join(line.rstrip() for line in out.strip().splitlines() if line.strip())


# ---------------------------------------------------------------------------- heat-map figure


def save_heatmap(path: str, image: np.ndarray, heat: np.ndarray, grid: tuple[int, int], areas: Sequence[Any], *,
                 title: str, caption: str) -> None:
    """PNG with two panels: the image (already at the model's resized size) with the predicted
    boxes, and the [grid_h, grid_w] heat map over a faded grey copy of it with the same boxes
    (final area solid, earlier areas dashed and lighter). The colour scale spans the map's own
    min..max; the colour bar shows the attention mass."""
    # A bare Figure (no pyplot): works headless and leaves a notebook's backend alone.
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    fig = Figure(figsize=(10.0, 4.6 * h / w + 1.0), layout="constrained")
    axes = fig.subplots(1, 2)
    grey = image.astype(np.float32).mean(axis=-1)
    axes[0].imshow(image, extent=(0, w, h, 0))
    axes[1].imshow(grey, extent=(0, w, h, 0), cmap="gray", vmin=0, vmax=255)
    lo, hi = float(heat.min()), float(heat.max())
    shown = axes[1].imshow(heat.reshape(grid), extent=(0, w, h, 0), cmap="inferno", alpha=0.75,
                           interpolation="nearest", vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    for ax in axes:
        for k, boxes in enumerate(areas):
            final = k == len(areas) - 1
            for x1, y1, x2, y2 in boxes:
                ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                                       edgecolor="lime" if final else "cyan", linewidth=2.5 if final else 1.2,
                                       linestyle="-" if final else "--", alpha=1.0 if final else 0.6))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("image and predicted areas", fontsize=9)
    axes[1].set_title(f"attention per visual token ({grid[0]}x{grid[1]})", fontsize=9)
    fig.suptitle("\n".join(textwrap.wrap(title, 100)), fontsize=10)
    fig.supxlabel("\n".join(textwrap.wrap(caption, 130)), fontsize=7)
    bar = fig.colorbar(shown, ax=axes[1], shrink=0.9)
    bar.set_label("attention mass", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


# ---------------------------------------------------------------------------- command line


def _parser():
    from sif_jax.cli import ArgumentParser

    p = ArgumentParser(prog="python -m sif_jax.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory, HF directory or sif_jax.export directory")
    p.add_argument("--image", required=True, help="image file (anything Pillow reads)")
    p.add_argument("--question", required=True)
    p.add_argument("--tokenizer", default="", help="'builtin' or tokenizer.json; default: the checkpoint's")
    p.add_argument("--model", default="", help="preset the checkpoint must be (tiny, qwen2_5_vl_3b, qwen2_5_vl_7b)")
    p.add_argument("--dtype", default="", help="float32 | bfloat16 | float16 (default: as saved)")
    p.add_argument("--attention_backend", default="", help="reference | xla | pallas_tpu | pallas_gpu")
    p.add_argument("--instruction", default="sif", help="appended to the question: sif | none | <text>")
    p.add_argument("--max_new_tokens", type=int, default=320)
    p.add_argument("--max_prompt_tokens", type=int, default=2048, help="longest prompt (image + question) allowed")
    p.add_argument("--min_pixels", type=int, default=None, help="default: the model family's (Qwen2.5-VL 3136)")
    p.add_argument("--max_pixels", type=int, default=None, help="default: the model family's (Qwen2.5-VL 1003520)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adaptvis", action="store_true", help="AdaptVis decoding (METHODS §3)")
    p.add_argument("--alpha_low", type=float, default=0.5)
    p.add_argument("--alpha_high", type=float, default=1.5)
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--heatmap", default="", help="write the attention heat-map PNG here")
    p.add_argument("--layers", default="-1", help="decoder layers of the heat-map, comma separated (-1 = last)")
    p.add_argument("--heatmap_chunk", type=int, default=16, help="sequence copies per heat-map decoder pass")
    p.add_argument("--verbose", action="store_true", help="tracebacks and library logs")
    return p


def _layers(value: str, num_layers: int) -> tuple[int, ...]:
    from sif_jax.cli import CLIError

    try:
        layers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"--layers={value!r}: expected comma-separated integers, e.g. -1 or 0,3") from None
    if not layers or any(not -num_layers <= i < num_layers for i in layers):
        raise CLIError(f"--layers={value!r}: the model has {num_layers} decoder layers (use 0..{num_layers - 1} "
                       f"or -{num_layers}..-1)")
    return layers


def run_generate(args: Any) -> dict[str, Any]:
    """Loads, generates, optionally draws the heat-map; returns what it printed, as a dict."""
    from sif_jax.cli import CLIError, instruction_text, load_model, read_image
    from sif_jax.data.batching import collate
    from sif_jax.data.format import check_format
    from sif_jax.data.pipeline import PreprocessConfig, Preprocessor
    from sif_jax.rl.adaptvis import (
        AdaptVisConfig,
        answer_tag_ids,
        generate_adaptvis,
        output_format_for_instruction,
        read_confidence,
    )
    from sif_jax.rl.rewards import extract_answer
    from sif_jax.rl.sampler import SamplingConfig, generate

    if args.max_new_tokens < 1:
        raise CLIError(f"--max_new_tokens={args.max_new_tokens}: must be >= 1")
    if args.max_prompt_tokens < 1:
        raise CLIError(f"--max_prompt_tokens={args.max_prompt_tokens}: must be >= 1")
    if not args.question.strip():
        raise CLIError("--question is empty")
    if args.heatmap_chunk < 1:
        raise CLIError(f"--heatmap_chunk={args.heatmap_chunk}: must be >= 1")
    if args.heatmap and not os.path.isdir(os.path.dirname(os.path.abspath(args.heatmap))):
        raise CLIError(f"--heatmap={args.heatmap!r}: the directory {os.path.dirname(args.heatmap)!r} does not exist")
    adaptvis = None
    if args.adaptvis:
        try:
            adaptvis = AdaptVisConfig(args.alpha_low, args.alpha_high, args.threshold)
        except ValueError as e:
            raise CLIError(f"--alpha_low/--alpha_high/--threshold: {e}") from None
    try:
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    except ValueError as e:
        raise CLIError(str(e)) from None
    image = read_image(args.image)  # input errors before the (possibly slow) checkpoint load
    loaded = load_model(args.checkpoint, model=args.model, tokenizer=args.tokenizer,
                        attention_backend=args.attention_backend, dtype=args.dtype)
    config, tok = loaded.config, loaded.tokenizer
    layers = _layers(args.layers, config.text.num_layers) if args.heatmap else ()
    pre = Preprocessor(tok, config, PreprocessConfig(min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                                     instruction=instruction_text(args.instruction)))
    try:
        example = pre({"id": "cli", "image": image, "depth": None, "problem": args.question, "answer": "",
                       "choices": [], "boxes": np.zeros((0, 4), np.float32), "trace": ""})
    except ValueError as e:
        raise CLIError(f"image {args.image!r}: {e}") from None
    n_prompt = len(example["prompt_tokens"])
    if n_prompt > args.max_prompt_tokens:
        n_question = len(tok.encode(pre.question_text(args.question)))
        raise CLIError(f"the prompt is {n_prompt} tokens (question + instruction {n_question}, image "
                       f"{len(example['region_cells'])}), more than "
                       f"--max_prompt_tokens={args.max_prompt_tokens}; shorten the question or raise the limit")
    batch = collate([example], config, length_buckets=(n_prompt,), patch_buckets=None)
    prompt = family_of(config).model_inputs(batch)
    rng = jax.random.key(args.seed)
    answer_tag = answer_tag_ids(tok, output_format_for_instruction(args.instruction))
    alpha = None
    if adaptvis is not None:
        av = generate_adaptvis(loaded.params, prompt, rng, config=config, sampling=sampling, adaptvis=adaptvis,
                               eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, answer_tag=answer_tag)
        samples, alpha = av.samples, float(np.asarray(av.alpha)[0])
        confidence, confidence_step = float(np.asarray(av.confidence)[0]), int(np.asarray(av.confidence_step)[0])
    else:
        samples = generate(loaded.params, prompt, rng, config=config, sampling=sampling, eos_token_id=tok.eos_id,
                           pad_token_id=tok.pad_id)
        conf, step, _ = read_confidence(samples, answer_tag)
        confidence, confidence_step = float(np.asarray(conf)[0]), int(np.asarray(step)[0])
    tokens, mask = np.asarray(samples.tokens), np.asarray(samples.completion_mask)
    text = tok.decode(tokens[0][mask[0]].tolist())
    parsed = check_format(text)
    answer = extract_answer(text, parsed)
    finished = not bool(np.asarray(samples.truncated)[0])
    result: dict[str, Any] = {"text": text, "answer": answer, "format": parsed.reason, "tokens": int(mask[0].sum()),
                              "finished": finished, "confidence": confidence, "confidence_step": confidence_step,
                              "alpha": alpha}
    print(f"question: {args.question}")
    print("trace:")
    print(textwrap.indent(pretty_trace(text) or "(empty)", "  "))
    print(f"answer: {answer if answer is not None else '(none)'}")
    print(f"format: {'ok' if parsed.ok else 'invalid: ' + parsed.reason}")
    stop = "stopped at EOS" if finished else f"hit --max_new_tokens={args.max_new_tokens}"
    line = f"generated {result['tokens']} tokens ({stop}); answer confidence {confidence:.3f} (token {confidence_step})"
    if alpha is not None:
        choice = "smooth" if confidence < adaptvis.threshold else "sharpen"
        line += f"; AdaptVis: {confidence:.3f} {'<' if confidence < adaptvis.threshold else '>='} threshold " \
                f"{adaptvis.threshold} -> alpha={alpha:g} ({choice})"
    print(line)
    if args.heatmap:
        heat, visual_mass = visual_attention_map(loaded.params, batch, tokens, mask, config=config, layers=layers,
                                                 chunk=args.heatmap_chunk)
        shown, grid = family_of(config).model_view(config, image, batch)
        areas = all_areas(text)
        layer_names = ",".join(str(i % config.text.num_layers) for i in layers)
        caption = (f"attention mass per visual token, decoder layer(s) {layer_names}, mean over heads and the "
                   f"{result['tokens']} generated tokens (total on image {visual_mass:.3f}); boxes: final <area> "
                   "solid, earlier areas dashed")
        title = f"Q: {args.question}  A: {answer if answer is not None else '(none)'}"
        try:
            save_heatmap(args.heatmap, shown, heat, grid, areas, title=title, caption=caption)
        except OSError as e:
            raise CLIError(f"--heatmap={args.heatmap!r}: cannot write: {e}") from None
        top = np.argsort(-heat)[:3]
        cells = ", ".join(f"(row {i // grid[1]}, col {i % grid[1]}): {heat[i]:.3f}" for i in top)
        print(f"heat-map: {args.heatmap} ({grid[0]}x{grid[1]} visual tokens, layer(s) {layer_names}, mean over "
              f"the {result['tokens']} generated tokens; attention on the image {visual_mass:.3f}; "
              f"top cells {cells}; {len(areas)} area(s) drawn)")
        result.update(heat=heat.tolist(), visual_mass=visual_mass, grid=grid)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    from sif_jax.cli import quiet_logging, run_cli

    args = _parser().parse_args(argv)
    quiet_logging(args.verbose)
    run_cli(lambda: run_generate(args), args.verbose)


if __name__ == "__main__":
    main(sys.argv[1:])
