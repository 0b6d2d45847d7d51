"""`python -m sif_jax.generate`: answer one question about one image, and show where the model looked.

    python -m sif_jax.generate --checkpoint=workdir/grpo --image=photo.png \
        --question="Is the red cube to the left of the blue sphere?" [--adaptvis] [--heatmap=out.png]

Prints the interleaved trace (`<think><area>..</area><text>..</text>..</think><answer>..</answer>`),
the answer, whether the trace follows the SIFThinker grammar, and the answer confidence (the max
probability of the first answer token's distribution in the alpha = 1 decode: the first token for
plain answers, the token after `<answer>` for `--instruction=sif` traces; `infer.adaptvis`) and, with
`--adaptvis`, the alpha AdaptVis chose from it (METHODS §3).

`--heatmap=out.png` draws, over the image as the model saw it (smart-resized), the attention mass
each visual token (one 28x28 px cell for Qwen2.5-VL) received, averaged over the decoder layers
`--layers` (default -1, the last; SAYO's choice), all heads, and **all generated completion
tokens** (each token's own query row in a teacher-forced pass over prompt + completion, EOS
included — the same rows and reduction as the TAS scoring pass), plus the boxes of the final
`<area>` (solid) and of the earlier areas (dashed, lighter).

How the per-token map is computed: `sif_jax.attention_map.visual_attention_map` (one teacher-forced
forward pass that records the layers' queries and keys, then the completion rows' attention
probabilities; the scanned layer layout falls back to one-hot region masks through the kernel, in
chunks of `--heatmap_chunk` copies, with a progress bar). Summed over the tokens the map equals the
visual mass of the scoring pass (tested). The teacher-forced pass applies no AdaptVis scaling: it
shows the model's own attention while it wrote the completion AdaptVis chose.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sif_jax.attention_map import visual_attention_map
from sif_jax.model.family import family_of

__all__ = ["visual_attention_map", "all_areas", "pretty_trace", "save_heatmap", "run_generate", "main"]


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
    from sif_jax.errors import InputError

    try:
        layers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--layers={value!r}: expected comma-separated integers, e.g. -1 or 0,3") from None
    if not layers or any(not -num_layers <= i < num_layers for i in layers):
        raise InputError(f"--layers={value!r}: the model has {num_layers} decoder layers (use 0..{num_layers - 1} "
                       f"or -{num_layers}..-1)")
    return layers


def run_generate(args: Any) -> dict[str, Any]:
    """Loads, generates, optionally draws the heat-map; returns what it printed, as a dict."""
    from sif_jax.checkpoint_loading import load_model
    from sif_jax.data.batching import collate
    from sif_jax.data.format import check_format
    from sif_jax.data.image import read_image_file
    from sif_jax.data.pipeline import PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import instruction_text
    from sif_jax.errors import InputError
    from sif_jax.infer.adaptvis import (
        AdaptVisConfig,
        answer_tag_ids,
        generate_adaptvis,
        output_format_for_instruction,
        read_confidence,
    )
    from sif_jax.infer.sampler import SamplingConfig, generate
    from sif_jax.rl.rewards import extract_answer

    if args.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens={args.max_new_tokens}: must be >= 1")
    if args.max_prompt_tokens < 1:
        raise InputError(f"--max_prompt_tokens={args.max_prompt_tokens}: must be >= 1")
    if not args.question.strip():
        raise InputError("--question is empty")
    if args.heatmap_chunk < 1:
        raise InputError(f"--heatmap_chunk={args.heatmap_chunk}: must be >= 1")
    if args.heatmap and not os.path.isdir(os.path.dirname(os.path.abspath(args.heatmap))):
        raise InputError(f"--heatmap={args.heatmap!r}: the directory {os.path.dirname(args.heatmap)!r} does not exist")
    adaptvis = None
    if args.adaptvis:
        try:
            adaptvis = AdaptVisConfig(args.alpha_low, args.alpha_high, args.threshold)
        except ValueError as e:
            raise InputError(f"--alpha_low/--alpha_high/--threshold: {e}") from None
    try:
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    except ValueError as e:
        raise InputError(str(e)) from None
    image = read_image_file(args.image)  # input errors before the (possibly slow) checkpoint load
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
        raise InputError(f"image {args.image!r}: {e}") from None
    n_prompt = len(example["prompt_tokens"])
    if n_prompt > args.max_prompt_tokens:
        n_question = len(tok.encode(pre.question_text(args.question)))
        raise InputError(f"the prompt is {n_prompt} tokens (question + instruction {n_question}, image "
                       f"{len(example['region_cells'])}), more than "
                       f"--max_prompt_tokens={args.max_prompt_tokens}; shorten the question or raise the limit")
    batch = collate([example], config, length_buckets=(n_prompt,), patch_buckets=None)
    prompt = batch.inputs
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
        heat, visual_mass = visual_attention_map(loaded.params, batch.inputs, tokens, mask, config=config,
                                                 layers=layers, chunk=args.heatmap_chunk, progress=True)
        shown, grid = family_of(config).model_view(config, image, batch.inputs)
        areas = all_areas(text)
        layer_names = ",".join(str(i % config.text.num_layers) for i in layers)
        caption = (f"attention mass per visual token, decoder layer(s) {layer_names}, mean over heads and the "
                   f"{result['tokens']} generated tokens (total on image {visual_mass:.3f}); boxes: final <area> "
                   "solid, earlier areas dashed")
        title = f"Q: {args.question}  A: {answer if answer is not None else '(none)'}"
        try:
            save_heatmap(args.heatmap, shown, heat, grid, areas, title=title, caption=caption)
        except OSError as e:
            raise InputError(f"--heatmap={args.heatmap!r}: cannot write: {e}") from None
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
