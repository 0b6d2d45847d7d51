"""The one model interface: a `ModelFamily` per architecture, chosen by the config's `family` field.

Every config class carries a class attribute `family` (a str: "qwen2_5_vl", "qwen3_vl", "llava", ...). Code
outside `sif_jax.model` never names an architecture: it calls `family_of(config)` and uses the
family's methods, or the module-level helpers below (`forward`, `get_preset`, `load_hf_checkpoint`).

A family provides (see `ModelFamily` for the exact signatures):

* config: `from_hf_config(hf_dict, **overrides)`, `presets` (name -> zero-argument factory; the
  released sizes and a `*_tiny` on the same code path), `config.to_hf_config()`;
* the Flax Linen module `module(config)` with the shared contract: `__call__(input_ids,
  attention_mask, positions, <image arrays>, image_mask=None, *, region_mask, visual_scale,
  return_attention_mass, return_kv, return_hidden)` -> (logits float32 [B, L, vocab] | None, aux),
  `decode_step(...)` for the KV cache (`sif_jax.model.cache`), `image_positions(input_ids, image_mask)`,
  and params with the decoder under `text` (`text/layers_{i}` or stacked `text/layers`) so
  `lm_head_kernel` and the layer layouts (`sif_jax.model.layout`) are shared;
* host-side inputs: `prepare_inputs(config, input_ids, attention_mask, pixel_values, **family_arrays)`
  (the arrays of the family's HF processor -> the module's arrays, including `positions`
  int32 [position_axes, B, L]), `model_inputs(inputs)` (the subset the module takes, by name, of a
  `prepare_inputs` dict or a `sif_jax.batch.ModelInputs`),
  `position_axes` (3 for M-RoPE, 1 for 1-D RoPE);
* images for the data pipeline: `process_example_image(rgb, boxes, config, min_pixels, max_pixels)` -> the
  per-example arrays, the number of image tokens and the region cells (`ImageInputs`),
  `cell_size(config)` (pixels per visual-token cell side), `chat_prompt(tokenizer, question,
  num_image_tokens, system)` (the chat template's ids), `tokenizer_ids(config)` (tokenizer attribute
  -> the id the config expects), `collate_images(config, input_ids, attention_mask, rows, pad_to)`
  (the rows' per-example image arrays -> the batch's model arrays, through `prepare_inputs`);
* `model_view(config, rgb, one_row_inputs)` (a `ModelInputs`): the image as the model saw it and its visual-token grid
  (for heat-maps);
* `load_tokenizer(path)`: the family's tokenizer from a tokenizer.json (the `Tokenizer` protocol of
  `sif_jax.data.tokenizer`);
* conversion: `hf_rules()` -> (compiled rules, canonical-name map) for `sif_jax.convert.hf`;
* `hf_model_types`: the `model_type` values of config.json that belong to the family.

Families register here by module path (imported on first use, so registering costs nothing and
creates no import cycle): each module defines `FAMILY`, an instance of a `ModelFamily`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from sif_jax.batch import ModelInputs

Params = Any
Config = Any

# family name -> module defining FAMILY. Presets: family name -> (light module, dict attribute).
FAMILY_MODULES: dict[str, str] = {
    "qwen2_5_vl": "sif_jax.model.qwen2_5_vl_family",
    "llava": "sif_jax.model.llava.family",
    "qwen3_vl": "sif_jax.model.qwen3_vl.family",
}
PRESET_MODULES: dict[str, tuple[str, str]] = {
    "qwen2_5_vl": ("sif_jax.model.config", "PRESETS"),
    "llava": ("sif_jax.model.llava.config", "PRESETS"),
    "qwen3_vl": ("sif_jax.model.qwen3_vl.config", "PRESETS"),
}


@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """One example's image, ready for collation.

    arrays: the per-image arrays the family's `prepare_inputs` takes (Qwen: pixel_values [N, 1176]
      and image_grid_thw [1, 3]; LLaVA: pixel_values [1, 3, S, S]).
    num_tokens: how many image tokens the prompt holds for it.
    region_cells: bool [num_tokens], the image tokens inside the target boxes (token order).
    num_patches: rows of the per-image vision input (for patch buckets; LLaVA: its token count).
    """

    arrays: dict[str, np.ndarray]
    num_tokens: int
    region_cells: np.ndarray
    num_patches: int


class ModelFamily(Protocol):
    """What a family implements (module doc). `name` equals its configs' `family` attribute."""

    name: str
    display_name: str
    hf_model_types: tuple[str, ...]
    position_axes: int

    @property
    def presets(self) -> Mapping[str, Callable[[], Config]]: ...
    def from_hf_config(self, hf: Mapping[str, Any], **overrides: Any) -> Config: ...
    def module(self, config: Config) -> Any: ...
    def prepare_inputs(self, config: Config, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                       pixel_values: np.ndarray | None = None, **arrays: Any) -> dict[str, np.ndarray]: ...
    def model_inputs(self, inputs: ModelInputs | Mapping[str, Any]) -> dict[str, Any]: ...
    def dummy_inputs(self, config: Config) -> dict[str, np.ndarray]: ...
    def init_params(self, config: Config, rng: Any) -> Params: ...
    def abstract_boxed_params(self, config: Config) -> Params: ...
    def param_logical_axes(self, config: Config) -> Params: ...
    def lm_head_kernel(self, params: Params, config: Config) -> Any: ...
    def cell_size(self, config: Config) -> int: ...
    def process_example_image(self, rgb: np.ndarray, boxes: np.ndarray, config: Config, *,
                              min_pixels: int, max_pixels: int, focus: np.ndarray | None = None) -> ImageInputs: ...
    def tokenizer_ids(self, config: Config) -> dict[str, int]: ...
    def collate_images(self, config: Config, input_ids: np.ndarray, attention_mask: np.ndarray,
                       examples: list[Mapping[str, Any]], pad_to: int) -> dict[str, np.ndarray]: ...
    def chat_prompt(self, tokenizer: Any, question: str, num_image_tokens: int,
                    system: str | None) -> list[int]: ...
    def chat_prompt_parts(self, tokenizer: Any, parts: Any, system: str | None) -> list[int]: ...
    def pixel_bounds(self, config: Config) -> tuple[int, int]: ...
    def text_rope(self, config: Config, positions: Any) -> tuple[Any, Any]: ...
    def load_tokenizer(self, path: str) -> Any: ...
    def model_view(self, config: Config, rgb: np.ndarray,
                   inputs: ModelInputs | Mapping[str, Any]) -> tuple[np.ndarray, tuple[int, int]]: ...
    def hf_rules(self) -> tuple[list, Callable[[str], str]]: ...


@functools.cache
def get_family(name: str) -> ModelFamily:
    """The registered family `name`; ValueError naming the known ones otherwise."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"model family {name!r} is unknown; registered: {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def family_of(config: Config) -> ModelFamily:
    """The family of a config (its class attribute `family`)."""
    name = getattr(config, "family", None)
    if name is None:
        raise ValueError(f"{type(config).__name__} has no `family` attribute; not a model config")
    return get_family(name)


def family_for_hf_config(hf: Mapping[str, Any]) -> ModelFamily:
    """The family whose `hf_model_types` holds config.json's `model_type`; ValueError otherwise."""
    model_type = hf.get("model_type")
    for name in FAMILY_MODULES:
        family = get_family(name)
        if model_type in family.hf_model_types:
            return family
    known = sorted(t for n in FAMILY_MODULES for t in get_family(n).hf_model_types)
    raise ValueError(f"config.json: model_type={model_type!r} is not supported; expected one of {known}")


def presets() -> dict[str, Callable[[], Config]]:
    """Every family's presets by name."""
    out: dict[str, Callable[[], Config]] = {}
    for module, attr in PRESET_MODULES.values():
        out.update(getattr(importlib.import_module(module), attr))
    return out


def get_preset(name: str) -> Config:
    """The named preset of any family (`presets()`); ValueError naming the choices otherwise."""
    table = presets()
    if name not in table:
        raise ValueError(f"model preset {name!r} is unknown; choose one of {sorted(table)}")
    return table[name]()


def module(config: Config) -> Any:
    """The Flax Linen module of `config`'s family."""
    return family_of(config).module(config)


def prepare_inputs(config: Config, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                   pixel_values: np.ndarray | None = None, **arrays: Any) -> dict[str, np.ndarray]:
    return family_of(config).prepare_inputs(config, input_ids, attention_mask, pixel_values, **arrays)


def model_inputs(config: Config, inputs: ModelInputs | Mapping[str, Any]) -> dict[str, Any]:
    """The arrays of `inputs` that `config`'s family module takes, by name."""
    return family_of(config).model_inputs(inputs)


def forward(params: Params, config: Config, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
            pixel_values: np.ndarray | None = None, **kwargs: Any) -> tuple[Any, dict]:
    """HF-style forward for any family: the arrays of the family's HF `forward` (`input_ids`,
    `attention_mask`, `pixel_values`, and `image_grid_thw` for the Qwen families); the module's
    keyword options (`region_mask`, `return_attention_mass`, ...) pass through.

    Returns logits float32 [B, L, vocab] and the aux dict."""
    family = family_of(config)
    options = {k: kwargs.pop(k) for k in ("region_mask", "visual_scale", "return_attention_mass", "return_kv",
                                           "return_hidden") if k in kwargs}
    inputs = family.prepare_inputs(config, input_ids, attention_mask, pixel_values, **kwargs)
    return family.module(config).apply({"params": params}, **family.model_inputs(inputs), **options)


def init_params(config: Config, rng: Any) -> Params:
    return family_of(config).init_params(config, rng)


def load_hf_checkpoint(path: Any, *, dtype: str | None = None, **overrides: Any) -> tuple[Config, Params]:
    """`sif_jax.convert.hf.load_hf_checkpoint`: any family, by config.json's model_type."""
    from sif_jax.convert.hf import load_hf_checkpoint as load

    return load(path, dtype=dtype, **overrides)


def save_hf_checkpoint(config: Config, params: Params, path: Any, **kwargs: Any) -> None:
    from sif_jax.convert.hf import save_hf_checkpoint as save

    save(config, params, path, **kwargs)


class BaseFamily:
    """Shared implementations for families whose module takes `dummy_inputs` and keeps the decoder
    under `text` (init, abstract params, logical axes, LM head)."""

    def init_params(self, config: Config, rng: Any) -> Params:
        """Random parameters (plain arrays, no partitioning boxes); works under `jax.eval_shape`."""
        import flax.linen as nn

        return nn.unbox(self._init_boxed(config, rng))

    def _init_boxed(self, config: Config, rng: Any) -> Params:
        return self.module(config).init(rng, **self.dummy_inputs(config))["params"]

    def abstract_boxed_params(self, config: Config) -> Params:
        """ShapeDtypeStructs of the params inside their `nn.LogicallyPartitioned` boxes."""
        import jax

        return jax.eval_shape(functools.partial(self._init_boxed, config), jax.random.key(0))

    def param_logical_axes(self, config: Config) -> Params:
        """PartitionSpecs of logical axis names, shaped like the params."""
        import flax.linen as nn

        return nn.get_partition_spec(self.abstract_boxed_params(config))

    def text_rope(self, config: Config, positions: Any) -> tuple[Any, Any]:
        """The decoder's rotary tables: cos, sin float32 [B, L, head_dim] for `positions` int
        [position_axes, B, L] (`language.rope_cos_sin`: Qwen2.5-VL's M-RoPE, LLaMA's 1-D RoPE). For
        analyses that recompute attention from a layer's queries and keys (`sif_jax.attention_map`)."""
        from sif_jax.model.language import rope_cos_sin

        return rope_cos_sin(positions, config.text)

    def pixel_bounds(self, config: Config) -> tuple[int, int]:
        """(min_pixels, max_pixels): the released processor's bounds on an image's resized area, in
        pixels, used when a run does not set `data.min_pixels` / `data.max_pixels`. This default is
        Qwen2-VL / Qwen2.5-VL's (`Qwen2VLImageProcessor.size`: 56 * 56 and 28 * 28 * 1280); a family
        whose processor ignores them (LLaVA's fixed crop) keeps it unused."""
        from sif_jax.data.image import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

        return DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS

    def chat_prompt_parts(self, tokenizer: Any, parts: Any, system: str | None) -> list[int]:
        """The chat template over a user turn of text (str) and images (int token counts), in order
        (`sif_jax.data.tokenizer.chat_prompt_parts`). This default takes one image followed by text
        (`[n, question]`, through `chat_prompt`); a family whose template places several images
        overrides it. ValueError otherwise, naming the family."""
        if len(parts) == 2 and isinstance(parts[0], int) and isinstance(parts[1], str):
            return self.chat_prompt(tokenizer, parts[1], parts[0], system)
        raise ValueError(f"{getattr(self, 'display_name', type(self).__name__)} prompts take one image before the "
                         "question; a two-image prompt (data.prompt='sifthinker' / 'sifthinker_sft') needs a Qwen "
                         "model family")

    def lm_head_kernel(self, params: Params, config: Config) -> Any:
        """The output projection as [hidden, vocab] (the embedding, transposed, when tied)."""
        if config.text.tie_word_embeddings:
            return params["text"]["embed_tokens"]["embedding"].T
        return params["text"]["lm_head"]["kernel"]


def count_params(params: Params) -> int:
    import jax

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def iter_families() -> Iterator[ModelFamily]:
    for name in FAMILY_MODULES:
        yield get_family(name)
