"""The grain input pipeline: data sources -> per-example preprocessing -> bucketed batches.

    source = BuiltinSource(seed=0, size=10_000)            # or TfdsSource("sif_spatial/small", ...)
    pre = Preprocessor(BuiltinTokenizer(), config)          # tokenizer + model config (+ options)
    ds = make_dataset(source, pre, batch_size=8, seed=0, repeat=8)   # repeat = GRPO group size
    it = iter(ds)                                           # a grain DatasetIterator
    batch = next(it); state = it.get_state(); ...; it.set_state(state)   # resume

Sources (grain `RandomAccessDataSource`s: `__len__` + `__getitem__`) return *raw examples*, a
plain dict: `id`, `image` uint8 [H, W, 3], `depth` float32 [H, W] in [0, 1] or None, `problem`,
`answer`, `choices` (list, empty for short answer), `family`, `relation`, `split`, `boxes`
float32 [k, 4] normalised, `trace` (the target text, "" if none), `index`, `scene_seed` (None for
real data), and optionally `focus` bool [r, c] (SAYO's focus area on a coarser token grid; the region
mask then comes from it instead of `boxes`, `regions.focus_region_mask`).

* `BuiltinSource`: example i is a pure function of (seed, split, i): scene seed
  `i + seed * 2**32` (+ `TEST_SEED_OFFSET` for split "test"), then `sample_question` and
  `build_trace` with the same seed — exactly `tfds_sif.scene_example`, so with seed=0 the
  built-in source and a built `sif_spatial` dataset hold the same examples. Nothing is pre-built.
* `TfdsSource`: `tfds.data_source` over a built `sif_spatial/*` or `sif_local` (array_record),
  decoded without TensorFlow (`tfds_sif.decode_example`).

`Preprocessor(example)` -> the per-example host dict `batching.collate` consumes:
`prompt_tokens` int32 (Qwen chat template with N image pads), `target_tokens` int32 (the trace,
no eos), `pixel_values` float32 [N*4, C*T*P*P], `image_grid_thw` [1, 3], `region_cells` bool [N]
(visual tokens whose cell overlaps a target box with positive area), `answer`, `choices`,
`target_boxes`, `depth` (the full-resolution float32 map by default — the G repeats of a GRPO
group share one array, so it costs 200 KB per *example* at 224²; `depth_size=S` area-averages it to
S² float16 instead, but measured on 150 built-in traces the ground-truth (box, depth) pairs then
pass the depth-consistency test (10% relative) only 99.3% (S=112), 95.8% (S=56), 90.9% (S=28) of
the time vs 100% at full resolution), `prompt_id` (the question id), `metadata` (id, family, relation, split, index).

`make_dataset`: `MapDataset.source(src).shuffle(seed).repeat(num_epochs).map(pre)` -> an
`IterDataset` (threads prefetch preprocessed examples) -> `.batch(batch_size, batch_fn=collate)`.
Shuffling is per epoch (grain reseeds each epoch), batches may straddle epochs. Iterators
checkpoint with `get_state()` / `set_state()` (a small dict), or through orbax with
`grain.checkpoint.CheckpointHandler`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from sif_jax.data.batching import DEFAULT_LENGTH_BUCKETS, collate, collate_sft
from sif_jax.data.image import encode_spectral_depth, load_image
from sif_jax.data.prompts import Prompt
from sif_jax.data.questions import sample_question
from sif_jax.data.scenes import SceneConfig, generate_scene
from sif_jax.data.tokenizer import DEFAULT_SYSTEM_PROMPT, SIF_INSTRUCTION, Tokenizer, check_tokenizer
from sif_jax.data.traces import TraceConfig, build_trace
from sif_jax.model.config import ModelConfig
from sif_jax.model.family import ImageInputs, family_of

__all__ = [
    "BuiltinSource", "TfdsSource", "PreprocessConfig", "Preprocessor", "make_dataset", "collate", "collate_sft",
    "DEFAULT_LENGTH_BUCKETS", "TEST_SEED_OFFSET", "downsample_depth",
]

# Same offset as tfds_sif (kept here so importing the pipeline does not import TFDS).
TEST_SEED_OFFSET = 1_000_000_000
SEED_STRIDE = 2**32


class BuiltinSource(grain.sources.RandomAccessDataSource):
    """`size` procedural examples (scene + question + trace), generated on access."""

    def __init__(
        self,
        seed: int = 0,
        size: int = 10_000,
        split: str = "train",
        scene_config: SceneConfig | None = None,
        trace_config: TraceConfig | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"BuiltinSource: split={split!r}, expected 'train' or 'test'")
        if not 0 < size <= TEST_SEED_OFFSET:
            raise ValueError(f"BuiltinSource: size={size} must be in (0, {TEST_SEED_OFFSET}]")
        self.seed, self.size, self.split = int(seed), int(size), split
        self.scene_config = scene_config or SceneConfig()
        self.trace_config = trace_config

    def __len__(self) -> int:
        return self.size

    def scene_seed(self, index: int) -> int:
        return index + self.seed * SEED_STRIDE + (TEST_SEED_OFFSET if self.split == "test" else 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"BuiltinSource: index {index} out of range [0, {self.size})")
        seed = self.scene_seed(index)
        scene = generate_scene(seed, self.scene_config)
        q = sample_question(scene, seed)
        trace = build_trace(scene, q, seed, self.trace_config)
        return {
            "id": q.id,
            "image": scene.image,
            "depth": scene.depth,
            "problem": q.text,
            "answer": q.answer,
            "choices": [str(c) for c in (q.choices or [])],
            "family": q.family,
            "relation": q.relation or "",
            "split": q.split,
            "boxes": np.asarray(q.target_boxes, np.float32).reshape(-1, 4),
            "trace": trace.text,
            "index": index,
            "scene_seed": seed,
        }

    def __repr__(self) -> str:
        return f"BuiltinSource(seed={self.seed}, size={self.size}, split={self.split!r})"


def _assistant_text(messages: Any) -> str:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "assistant":
            content = m.get("content", "")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                return "".join(c.get("text", "") for c in content if isinstance(c, dict))
            return str(content)
    return ""


class TfdsSource(grain.sources.RandomAccessDataSource):
    """A built TFDS dataset (`sif_spatial/<size>` or `sif_local`) read with `tfds.data_source`."""

    def __init__(self, name: str, split: str = "train", data_dir: str | os.PathLike | None = None) -> None:
        import tensorflow_datasets as tfds

        from sif_jax.data import tfds_sif  # noqa: F401  (registers the builders)

        self.name, self.split = name, split
        self._source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else os.fspath(data_dir),
                                        download=False)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from sif_jax.data.tfds_sif import decode_example

        index = int(index)
        ex = decode_example(self._source[index])
        depth = ex.get("depth")
        return {
            "id": ex["id"],
            "image": np.asarray(ex["image"], np.uint8),
            "depth": None if depth is None else np.asarray(depth, np.float32),
            "problem": ex["problem"],
            "answer": ex["answer"],
            "choices": list(ex.get("choices") or []),
            "family": ex.get("family", ""),
            "relation": ex.get("relation", ""),
            "split": ex.get("split", ex.get("source", "")),
            "boxes": np.asarray(ex["boxes"], np.float32).reshape(-1, 4),
            "trace": ex["trace"] if "trace" in ex else _assistant_text(ex.get("messages")),
            "index": index,
            "scene_seed": int(ex["scene_seed"]) if "scene_seed" in ex else None,
        }

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r})"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Per-example options. `instruction` is appended to the question after `instruction_separator`
    (None: not); `prompts.PROMPTS` holds the wordings a config can choose."""

    min_pixels: int | None = None  # None: the model family's (`family.pixel_bounds`)
    max_pixels: int | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    instruction: str | None = SIF_INSTRUCTION
    depth_size: int | None = None  # None: full-resolution float32 (see the module doc)
    instruction_separator: str = "\n"  # between the question and the instruction (`prompts.Prompt`)
    depth_image: bool = False  # SIFThinker's two-image user turn: RGB, then the depth picture (`prompts`)

    @classmethod
    def from_prompt(cls, prompt: Prompt, **kwargs: Any) -> PreprocessConfig:
        """The options of a `prompts.Prompt` wording (system turn, instruction, separator, images)."""
        return cls(system_prompt=prompt.system, instruction=prompt.instruction,
                   instruction_separator=prompt.separator, depth_image=prompt.depth_image, **kwargs)

    @property
    def prompt(self) -> Prompt:
        return Prompt(self.system_prompt, self.instruction, self.instruction_separator, self.depth_image)


def downsample_depth(depth: np.ndarray, size: int | None) -> np.ndarray:
    """float [H, W] -> float16 [size, size] by area averaging (PIL BOX); size None: float32 as is."""
    depth = np.asarray(depth, np.float32)
    if size is None:
        return depth
    return np.asarray(Image.fromarray(depth, mode="F").resize((size, size), Image.Resampling.BOX)).astype(np.float16)


def record_name(example: Any) -> str:
    """`id=... index=...` of a raw example (or of a preprocessed one's metadata), for error messages."""
    if not isinstance(example, dict):
        return f"<{type(example).__name__}>"
    meta = example.get("metadata") if isinstance(example.get("metadata"), dict) else {}
    rid = example.get("id", meta.get("id", example.get("prompt_id")))
    index = example.get("index", meta.get("index"))
    return f"id={rid!r} index={index!r}"


def max_patches_per_image(config: ModelConfig, max_pixels: int) -> int:
    """The most vision patches `smart_resize` can give one image: max_pixels // patch_size**2 (the
    resized H*W never exceeds max_pixels; T = 1 for a still image)."""
    return int(max_pixels) // config.vision.patch_size ** 2


def preprocess_within_bucket(
    example: dict[str, Any], *, preprocessor: Preprocessor, max_patches: int
) -> dict[str, Any]:
    """`preprocessor(example)`, then ValueError naming the record if its image has more than
    `max_patches` patches (the largest patch bucket): lower max_pixels
    (<= max_patches * patch_size**2 bounds every image, see `max_patches_per_image`) or add a bucket."""
    out = preprocessor(example)
    n = int(out["image_patches"])
    if n > max_patches:
        raise ValueError(
            f"record {record_name(example)}: its image has {n} patches (image_grid_thw "
            f"{np.asarray(out.get('image_grid_thw')).tolist()}), "
            f"more than the largest patch bucket {max_patches}; lower max_pixels (at most "
            f"{max_patches * preprocessor.config.vision.patch_size ** 2} keeps every image within it) or add a bucket"
        )
    return out


def depth_picture(example: dict[str, Any]) -> np.ndarray:
    """uint8 [H, W, 3]: the depth image a two-image prompt shows: the stored picture (`depth_image`, a
    path or PNG bytes, read like any image: SIF-50K's Spectral_r PNGs as SIFThinker feeds them), else the
    float `depth` map drawn in Spectral_r (`image.encode_spectral_depth`). ValueError when the example
    has neither."""
    stored = example.get("depth_image")
    if stored is not None and not (isinstance(stored, str) and not stored):
        return load_image(stored)
    depth = example.get("depth")
    if depth is None:
        raise ValueError("the prompt shows a depth image (data.prompt 'sifthinker' / 'sifthinker_sft'), but the "
                         "record has no depth map ('depth_image' in SIF-50K records)")
    return encode_spectral_depth(depth)


def two_images(rgb: ImageInputs, depth: ImageInputs) -> ImageInputs:
    """One example's RGB and depth images as the two images of one prompt: each array concatenated
    along axis 0 (Qwen: pixel_values [N_rgb + N_depth, D], image_grid_thw [2, 3]), the tokens added,
    the region cells those of the RGB image (the depth image's all False) and `num_patches` the larger
    image's (the per-image patch bucket)."""
    arrays = {k: np.concatenate([np.asarray(rgb.arrays[k]), np.asarray(depth.arrays[k])]) for k in rgb.arrays}
    cells = np.concatenate([np.asarray(rgb.region_cells, bool), np.zeros(depth.num_tokens, bool)])
    return ImageInputs(arrays, rgb.num_tokens + depth.num_tokens, cells, max(rgb.num_patches, depth.num_patches))


class Preprocessor:
    """Raw example -> the per-example dict `collate` consumes (see the module doc)."""

    def __init__(self, tokenizer: Tokenizer, config: ModelConfig, options: PreprocessConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.options = options or PreprocessConfig()
        self.family = family_of(config)
        family_min, family_max = self.family.pixel_bounds(config)
        self.min_pixels = family_min if self.options.min_pixels is None else int(self.options.min_pixels)
        self.max_pixels = family_max if self.options.max_pixels is None else int(self.options.max_pixels)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"Preprocessor: min_pixels={self.min_pixels} and max_pixels={self.max_pixels} must "
                             "satisfy 0 < min_pixels <= max_pixels")
        check_tokenizer(tokenizer, config, what="Preprocessor")

    def question_text(self, problem: str) -> str:
        return self.options.prompt.question(problem)

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        """Raises ValueError naming the record (`id`, `index`) for any bad field or image."""
        try:
            return self._process(example)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise ValueError(f"record {record_name(example)}: {type(e).__name__}: {e}") from e

    def _process(self, example: dict[str, Any]) -> dict[str, Any]:
        opt = self.options
        boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        img = self.family.process_example_image(load_image(example["image"]), boxes, self.config,
                                                min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                                focus=example.get("focus"))
        if opt.depth_image:
            depth_img = self.family.process_example_image(depth_picture(example), np.zeros((0, 4), np.float32),
                                                          self.config, min_pixels=self.min_pixels,
                                                          max_pixels=self.max_pixels)
            img = two_images(img, depth_img)
            tokens = [img.num_tokens - depth_img.num_tokens, depth_img.num_tokens]
        else:
            tokens = [img.num_tokens]
        parts = opt.prompt.user_parts(example["problem"], tokens)
        prompt = self.family.chat_prompt_parts(self.tokenizer, parts, opt.system_prompt)
        trace = example.get("trace") or ""
        target = self.tokenizer.encode(trace)
        depth = example.get("depth")
        choices = list(example.get("choices") or [])
        return {
            "prompt_tokens": np.asarray(prompt, np.int32),
            "target_tokens": np.asarray(target, np.int32),
            "answer_start": answer_start(self.tokenizer, trace, target),
            **img.arrays,
            "image_patches": img.num_patches,
            "region_cells": img.region_cells,
            "answer": example["answer"],
            "choices": choices or None,
            "target_boxes": boxes,
            "depth": None if depth is None else downsample_depth(depth, opt.depth_size),
            "prompt_id": str(example["id"]),
            "metadata": {k: example.get(k, "") for k in ("id", "family", "relation", "split", "index")},
        }


def answer_start(tokenizer: Any, trace: str, target: Sequence[int]) -> int:
    """The index in `target` (`tokenizer.encode(trace)`) of the first token of the trace's final
    `<answer>` tag: the tokens of the text before it, where they are a prefix of `target` (else the
    length of the longest common prefix, the boundary token then counting as the answer's);
    len(target) when the trace has no `<answer>` (SFT answer weighting then weights the eos only)."""
    cut = trace.rfind("<answer>")
    if cut < 0:
        return len(target)
    before = list(tokenizer.encode(trace[:cut]))
    common = 0
    for a, b in zip(before, target, strict=False):
        if a != b:
            break
        common += 1
    return common


def make_dataset(
    source: Sequence[dict[str, Any]],
    preprocessor: Preprocessor,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    repeat: int = 1,
    sft: bool = False,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    patch_buckets: Sequence[int] | None = None,
    drop_remainder: bool = True,
    num_threads: int = 2,
    prefetch: int = 16,
) -> grain.IterDataset:
    """The grain pipeline; `iter(...)` gives a checkpointable `grain.DatasetIterator`.

    Args:
      source: a random-access source of raw examples (`BuiltinSource`, `TfdsSource`, or a list).
      preprocessor: raw example -> per-example dict.
      batch_size: examples per batch (a batch has batch_size * repeat rows).
      seed: shuffle seed (each epoch is shuffled differently, deterministically).
      shuffle: False keeps the source order (evaluation).
      num_epochs: None = repeat forever.
      repeat: G rows per example (GRPO group size); sft: use `collate_sft`.
      length_buckets, patch_buckets: see `batching.collate`.

    With patch_buckets, every example is checked against the largest bucket as it is preprocessed
    (`preprocess_within_bucket`): an image with more patches stops the run with an error naming the
    record, before it reaches `collate`.
      num_threads, prefetch: grain `ReadOptions` for preprocessing (0 threads = in the caller).
    """
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    pre = preprocessor if not patch_buckets else functools.partial(
        preprocess_within_bucket, preprocessor=preprocessor, max_patches=max(patch_buckets))
    ds = ds.repeat(num_epochs).map(pre)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    fn = collate_sft if sft else collate
    batch_fn = functools.partial(fn, config=preprocessor.config, repeat=repeat, length_buckets=tuple(length_buckets),
                                 patch_buckets=None if patch_buckets is None else tuple(patch_buckets),
                                 pad_id=preprocessor.config.pad_token_id)
    return it_ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)


def benchmark(num_batches: int = 20, batch_size: int = 8, repeat: int = 1, num_threads: int = 2,
              sft: bool = False) -> float:
    """Examples/s of the pipeline alone (BuiltinSource 224x224 -> preprocess -> collate), tiny config."""
    import time

    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.config import tiny

    pre = Preprocessor(BuiltinTokenizer(), tiny())
    ds = make_dataset(BuiltinSource(seed=0, size=100_000), pre, batch_size=batch_size, seed=0, repeat=repeat,
                      sft=sft, num_threads=num_threads)
    it = iter(ds)
    next(it)  # warm-up (thread pool start)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Measure the input pipeline's throughput.")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sft", action="store_true")
    a = parser.parse_args(argv)
    rate = benchmark(a.batches, a.batch_size, a.repeat, a.threads, a.sft)
    print(f"pipeline: {rate:.1f} examples/s (batch {a.batch_size}, repeat {a.repeat}, threads {a.threads}, "
          f"sft={a.sft}, tiny config, 224x224 built-in scenes)")


if __name__ == "__main__":
    main()
