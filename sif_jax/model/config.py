"""Model configuration: a frozen `ModelConfig` (vision + text) and the named presets.

The presets `qwen2_5_vl_3b` and `qwen2_5_vl_7b` carry the sizes of the released
Qwen2.5-VL-3B/7B-Instruct `config.json` files; `tiny` keeps every code path of the real
architecture (2x2 merge, window attention with a full-attention block, GQA, M-RoPE) at toy width
so that it trains on two CPU cores; `small` is the same code path at ~20M parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

# The Qwen special-token ids of the released checkpoints.
QWEN_IMAGE_TOKEN_ID = 151655
QWEN_VIDEO_TOKEN_ID = 151656
QWEN_VISION_START_TOKEN_ID = 151652
QWEN_VISION_END_TOKEN_ID = 151653
QWEN_EOS_TOKEN_ID = 151645
QWEN_BOS_TOKEN_ID = 151643

# Values of ModelConfig.remat_policy (see sif_jax.model.layers.remat_policy for what each saves).
REMAT_POLICIES = ("none", "full", "dots", "save_attention")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The Qwen2.5-VL vision tower (ViT with 2-D rotary, window attention, 2x2 merger)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch as HF's processor writes it: C * T * P * P (1176)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def cell_size(self) -> int:
        """Side in pixels of the image cell that becomes one LLM visual token (28 for Qwen2.5)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_cells(self) -> int:
        """Window side in merged tokens (`window_size // merge // patch`, 4 for the released)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder with M-RoPE."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Qwen2.5-VL model: vision tower, text decoder, special-token ids and numerics.

    `dtype` is the compute dtype, `param_dtype` the storage dtype of parameters.
    `attention_backend` selects the attention implementation every layer uses
    (see `sif_jax.kernels.region_attention`); None picks one for the running platform.

    `scan_layers` runs the decoder layers and the vision blocks under `nn.scan` (one compiled
    body each instead of one per layer; parameters then carry a leading layer axis, see
    `sif_jax.model.layout`). `remat_policy` rematerialises each layer/block in the backward
    pass (`nn.remat`), as MaxText's `remat_policy`: "none" keeps every activation, "full" keeps
    only the layer inputs, "dots" also keeps the outputs of matmuls against weights
    (`jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims`), "save_attention" keeps the
    attention output and the MLP input (named with `jax.ad_checkpoint.checkpoint_name`).
    Neither changes the numbers the model computes.

    `family` names the model family (`sif_jax.model.family`) that runs this config.
    """

    family: ClassVar[str] = "qwen2_5_vl"

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_id: int = QWEN_IMAGE_TOKEN_ID
    video_token_id: int = QWEN_VIDEO_TOKEN_ID
    vision_start_token_id: int = QWEN_VISION_START_TOKEN_ID
    vision_end_token_id: int = QWEN_VISION_END_TOKEN_ID
    eos_token_id: int = QWEN_EOS_TOKEN_ID
    bos_token_id: int = QWEN_BOS_TOKEN_ID
    pad_token_id: int = QWEN_BOS_TOKEN_ID
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_backend: str | None = None
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
        """Reads a Hugging Face Qwen2.5-VL `config.json` (as a dict).

        Accepts both layouts: the released flat one (text fields at the top level,
        `rope_scaling`) and the nested one written by newer transformers (`text_config`,
        `rope_parameters`). Fields the file leaves out take the values transformers assumes.
        """
        if hf.get("model_type") not in (None, "qwen2_5_vl"):
            raise ValueError(
                f"config.json: model_type={hf.get('model_type')!r}, expected 'qwen2_5_vl'"
            )
        text_src: dict[str, Any] = dict(hf)
        text_src.pop("vision_config", None)
        if isinstance(hf.get("text_config"), Mapping):
            text_src.update(hf["text_config"])
        vis_src: Mapping[str, Any] = hf.get("vision_config") or {}

        rope = text_src.get("rope_parameters") or text_src.get("rope_scaling") or {}
        rope_theta = rope.get("rope_theta", text_src.get("rope_theta", 1_000_000.0))
        mrope = tuple(rope.get("mrope_section", (16, 24, 24)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ValueError(
                f"config.json: rope type {rope_type!r} is not supported (only default M-RoPE)"
            )
        if text_src.get("use_sliding_window"):
            raise ValueError("config.json: use_sliding_window=true is not supported")

        # Defaults below are transformers' class defaults for missing keys.
        text = TextConfig(
            vocab_size=int(text_src.get("vocab_size", 152064)),
            hidden_size=int(text_src.get("hidden_size", 8192)),
            intermediate_size=int(text_src.get("intermediate_size", 29568)),
            num_layers=int(text_src.get("num_hidden_layers", 80)),
            num_heads=int(text_src.get("num_attention_heads", 64)),
            num_kv_heads=int(
                text_src.get("num_key_value_heads") or text_src.get("num_attention_heads", 64)
            ),
            rms_norm_eps=float(text_src.get("rms_norm_eps", 1e-5)),
            rope_theta=float(rope_theta),
            mrope_section=mrope,  # type: ignore[arg-type]
            hidden_act=str(text_src.get("hidden_act", "silu")),
            tie_word_embeddings=bool(
                hf.get("tie_word_embeddings", text_src.get("tie_word_embeddings", False))
            ),
        )
        vis_rope = vis_src.get("rope_parameters") or {}
        vision = VisionConfig(
            depth=int(vis_src.get("depth", 32)),
            hidden_size=int(vis_src.get("hidden_size", 3584)),
            intermediate_size=int(vis_src.get("intermediate_size", 3420)),
            num_heads=int(vis_src.get("num_heads", 16)),
            in_channels=int(vis_src.get("in_channels", vis_src.get("in_chans", 3))),
            patch_size=int(vis_src.get("patch_size", vis_src.get("spatial_patch_size", 14))),
            temporal_patch_size=int(vis_src.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vis_src.get("spatial_merge_size", 2)),
            window_size=int(vis_src.get("window_size", 112)),
            fullatt_block_indexes=tuple(vis_src.get("fullatt_block_indexes", (7, 15, 23, 31))),
            out_hidden_size=int(vis_src.get("out_hidden_size", 3584)),
            hidden_act=str(vis_src.get("hidden_act", "silu")),
            rope_theta=float(vis_rope.get("rope_theta", 10000.0)),
            tokens_per_second=int(vis_src.get("tokens_per_second", 4)),
        )
        eos = text_src.get("eos_token_id", QWEN_EOS_TOKEN_ID)
        if isinstance(eos, Sequence):
            eos = eos[0]
        bos = text_src.get("bos_token_id", QWEN_BOS_TOKEN_ID)
        pad = text_src.get("pad_token_id")
        fields = dict(
            vision=vision,
            text=text,
            image_token_id=int(hf.get("image_token_id", QWEN_IMAGE_TOKEN_ID)),
            video_token_id=int(hf.get("video_token_id", QWEN_VIDEO_TOKEN_ID)),
            vision_start_token_id=int(hf.get("vision_start_token_id", QWEN_VISION_START_TOKEN_ID)),
            vision_end_token_id=int(hf.get("vision_end_token_id", QWEN_VISION_END_TOKEN_ID)),
            eos_token_id=int(eos),
            bos_token_id=int(bos) if bos is not None else QWEN_BOS_TOKEN_ID,
            pad_token_id=int(pad) if pad is not None else int(bos or 0),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The released (flat) `config.json` layout, which every transformers version reads."""
        v, t = self.vision, self.text
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "hidden_act": t.hidden_act,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "vocab_size": t.vocab_size,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {
                "type": "default",
                "rope_type": "default",
                "mrope_section": list(t.mrope_section),
            },
            "max_position_embeddings": 128000,
            "use_sliding_window": False,
            "tie_word_embeddings": t.tie_word_embeddings,
            "torch_dtype": self.param_dtype,
            "vision_config": {
                "model_type": "qwen2_5_vl",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_channels": v.in_channels,
                "in_chans": v.in_channels,
                "patch_size": v.patch_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "out_hidden_size": v.out_hidden_size,
                "hidden_act": v.hidden_act,
                "tokens_per_second": v.tokens_per_second,
            },
        }


def _validate(config: ModelConfig) -> None:
    """Fails on an inconsistent config with the field name and value, before anything compiles."""
    v, t = config.vision, config.text

    def need(ok: bool, field: str, value: Any, why: str) -> None:
        if not ok:
            raise ValueError(f"ModelConfig.{field}={value!r}: {why}")

    need(v.hidden_size % v.num_heads == 0, "vision.hidden_size", v.hidden_size,
         f"must be divisible by vision.num_heads={v.num_heads}")
    need(v.head_dim % 4 == 0, "vision.num_heads", v.num_heads,
         f"vision head_dim={v.head_dim} must be a multiple of 4 for the 2-D rotary")
    need(t.hidden_size % t.num_heads == 0, "text.hidden_size", t.hidden_size,
         f"must be divisible by text.num_heads={t.num_heads}")
    need(t.num_heads % t.num_kv_heads == 0, "text.num_kv_heads", t.num_kv_heads,
         f"must divide text.num_heads={t.num_heads}")
    need(len(t.mrope_section) == 3 and sum(t.mrope_section) * 2 == t.head_dim,
         "text.mrope_section", t.mrope_section,
         f"needs 3 parts summing to head_dim/2={t.head_dim // 2}")
    need(all(0 <= i < v.depth for i in v.fullatt_block_indexes), "vision.fullatt_block_indexes",
         v.fullatt_block_indexes, f"indices must lie in [0, vision.depth={v.depth})")
    need(v.window_cells >= 1, "vision.window_size", v.window_size,
         f"must be at least patch*merge={v.cell_size}")
    for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id",
                 "eos_token_id", "pad_token_id"):
        value = getattr(config, name)
        need(0 <= value < t.vocab_size, name, value,
             f"must lie in the vocabulary [0, text.vocab_size={t.vocab_size})")
    from sif_jax.kernels.region_attention.ops import BACKENDS
    from sif_jax.model.layers import DTYPES

    for name in ("dtype", "param_dtype"):
        need(getattr(config, name) in DTYPES, name, getattr(config, name), f"expected one of {', '.join(DTYPES)}")
    need(config.attention_backend is None or config.attention_backend in BACKENDS,
         "attention_backend", config.attention_backend,
         f"expected None, {', '.join(map(repr, BACKENDS))}")
    need(config.remat_policy in REMAT_POLICIES, "remat_policy", config.remat_policy,
         f"expected one of {', '.join(map(repr, REMAT_POLICIES))}")
    need(isinstance(config.scan_layers, bool), "scan_layers", config.scan_layers, "expected True or False")


# Special-token ids of the built-in tokenizer (sif_jax.data.tokenizer) used by `tiny`.
TINY_PAD_TOKEN_ID = 0
TINY_EOS_TOKEN_ID = 1  # <|im_end|> ends a turn, as in Qwen chat models
TINY_BOS_TOKEN_ID = 2
TINY_VISION_START_TOKEN_ID = 3
TINY_VISION_END_TOKEN_ID = 4
TINY_IMAGE_TOKEN_ID = 5
TINY_VIDEO_TOKEN_ID = 6


def tiny() -> ModelConfig:
    """~0.3M parameters, same code path as the released models; trains on two CPU cores."""
    return ModelConfig(
        vision=VisionConfig(
            depth=4, hidden_size=32, intermediate_size=64, num_heads=2,
            window_size=56, fullatt_block_indexes=(1, 3), out_hidden_size=64,
        ),
        text=TextConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=4,
            num_heads=4, num_kv_heads=2, mrope_section=(2, 3, 3), tie_word_embeddings=True,
        ),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        video_token_id=TINY_VIDEO_TOKEN_ID,
        vision_start_token_id=TINY_VISION_START_TOKEN_ID,
        vision_end_token_id=TINY_VISION_END_TOKEN_ID,
        eos_token_id=TINY_EOS_TOKEN_ID,
        bos_token_id=TINY_BOS_TOKEN_ID,
        pad_token_id=TINY_PAD_TOKEN_ID,
    )


def small() -> ModelConfig:
    """~20M parameters: `tiny`'s code path and built-in tokenizer (vocabulary 1024) at a width that
    can learn the built-in task (configs/grpo.py:small). Vision: 6 blocks of width 192 (3 heads of 64,
    full attention in blocks 2 and 5, 4x4-token windows as the released models); text: 8 layers of
    width 384 (6 heads of 64, 2 KV heads, M-RoPE sections (8, 12, 12) as the released 16/24/24 halved)."""
    return ModelConfig(
        vision=VisionConfig(
            depth=6, hidden_size=192, intermediate_size=768, num_heads=3,
            window_size=112, fullatt_block_indexes=(2, 5), out_hidden_size=384,
        ),
        text=TextConfig(
            vocab_size=1024, hidden_size=384, intermediate_size=1536, num_layers=8,
            num_heads=6, num_kv_heads=2, mrope_section=(8, 12, 12), tie_word_embeddings=True,
        ),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        video_token_id=TINY_VIDEO_TOKEN_ID,
        vision_start_token_id=TINY_VISION_START_TOKEN_ID,
        vision_end_token_id=TINY_VISION_END_TOKEN_ID,
        eos_token_id=TINY_EOS_TOKEN_ID,
        bos_token_id=TINY_BOS_TOKEN_ID,
        pad_token_id=TINY_PAD_TOKEN_ID,
    )


def qwen2_5_vl_3b() -> ModelConfig:
    """Qwen2.5-VL-3B-Instruct, as in its released config.json (tied embeddings)."""
    return ModelConfig(
        vision=VisionConfig(out_hidden_size=2048),
        text=TextConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
            num_heads=16, num_kv_heads=2, tie_word_embeddings=True,
        ),
        param_dtype="bfloat16",
        dtype="bfloat16",
    )


def qwen2_5_vl_7b() -> ModelConfig:
    """Qwen2.5-VL-7B-Instruct, as in its released config.json (untied lm_head)."""
    return ModelConfig(
        vision=VisionConfig(out_hidden_size=3584),
        text=TextConfig(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
            num_heads=28, num_kv_heads=4, tie_word_embeddings=False,
        ),
        param_dtype="bfloat16",
        dtype="bfloat16",
    )


PRESETS = {"tiny": tiny, "small": small, "qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b}


def get_preset(name: str) -> ModelConfig:
    """Returns the named preset: one of `tiny`, `small`, `qwen2_5_vl_3b`, `qwen2_5_vl_7b`."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)}") from None
