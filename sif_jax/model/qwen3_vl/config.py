"""Qwen3-VL configuration: a frozen `Qwen3VLConfig` (vision + text) and the named presets.

Field meanings and defaults follow transformers' `Qwen3VLVisionConfig` / `Qwen3VLTextConfig`
(transformers/models/qwen3_vl/configuration_qwen3_vl.py). The presets `qwen3_vl_2b`, `qwen3_vl_4b`
and `qwen3_vl_8b` carry the sizes of the released Qwen3-VL-{2B,4B,8B}-Instruct `config.json` files;
`qwen3_vl_tiny` keeps every code path (16 px patches, 2x2 merge, learned position grid, DeepStack,
GQA, QK-norm, interleaved M-RoPE) at toy width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sif_jax.model.config import (
    QWEN_BOS_TOKEN_ID,
    QWEN_EOS_TOKEN_ID,
    QWEN_IMAGE_TOKEN_ID,
    QWEN_VIDEO_TOKEN_ID,
    QWEN_VISION_END_TOKEN_ID,
    QWEN_VISION_START_TOKEN_ID,
    REMAT_POLICIES,
    TINY_BOS_TOKEN_ID,
    TINY_EOS_TOKEN_ID,
    TINY_IMAGE_TOKEN_ID,
    TINY_PAD_TOKEN_ID,
    TINY_VIDEO_TOKEN_ID,
    TINY_VISION_END_TOKEN_ID,
    TINY_VISION_START_TOKEN_ID,
)

# The released preprocessor_config.json: Qwen2VLImageProcessor with 16 px patches, mean = std = 0.5,
# size {"shortest_edge": 65536, "longest_edge": 16777216} (min / max pixels).
QWEN3_VL_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_VL_IMAGE_STD = (0.5, 0.5, 0.5)
QWEN3_VL_MIN_PIXELS = 65536
QWEN3_VL_MAX_PIXELS = 16777216


@dataclasses.dataclass(frozen=True)
class Qwen3VLVisionConfig:
    """The Qwen3-VL vision tower: ViT with LayerNorm, learned + 2-D rotary positions, DeepStack."""

    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 3584
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch as HF's processor writes it: C * T * P * P (1536)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def cell_size(self) -> int:
        """Side in pixels of the image cell that becomes one LLM visual token (32)."""
        return self.patch_size * self.spatial_merge_size

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def num_grid_per_side(self) -> int:
        """Side of the square learned position grid: int(sqrt(num_position_embeddings)) (48)."""
        return int(self.num_position_embeddings**0.5)


@dataclasses.dataclass(frozen=True)
class Qwen3VLTextConfig:
    """The Qwen3 decoder: GQA with QK-norm, SwiGLU, RMSNorm, interleaved M-RoPE."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    hidden_act: str = "silu"
    attention_bias: bool = False
    tie_word_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    """A Qwen3-VL model: vision tower, text decoder, special-token ids and numerics.

    `dtype`, `param_dtype`, `attention_backend`, `scan_layers` and `remat_policy` mean what they
    mean in `sif_jax.model.config.ModelConfig`. `family` names the model family
    (`sif_jax.model.family`) that runs this config.
    """

    family: ClassVar[str] = "qwen3_vl"

    vision: Qwen3VLVisionConfig = Qwen3VLVisionConfig()
    text: Qwen3VLTextConfig = Qwen3VLTextConfig()
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

    def replace(self, **changes: Any) -> Qwen3VLConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> Qwen3VLConfig:
        """Reads a Hugging Face Qwen3-VL `config.json` (as a dict).

        Accepts `rope_scaling` (the released files) or `rope_parameters` (newer transformers) in
        `text_config`. Missing fields take transformers' class defaults. Raises ValueError for
        another model_type or an unsupported rope type.
        """
        if hf.get("model_type") not in (None, "qwen3_vl"):
            raise ValueError(f"config.json: model_type={hf.get('model_type')!r}, expected 'qwen3_vl'")
        t: Mapping[str, Any] = hf.get("text_config") or {}
        v: Mapping[str, Any] = hf.get("vision_config") or {}
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"config.json: text rope type {rope_type!r} is not supported (only default M-RoPE)")
        if rope.get("mrope_interleaved") is False:
            raise ValueError("config.json: mrope_interleaved=false is not what Qwen3-VL computes")
        heads = int(t.get("num_attention_heads", 32))
        text = Qwen3VLTextConfig(
            vocab_size=int(t.get("vocab_size", 151936)),
            hidden_size=int(t.get("hidden_size", 4096)),
            intermediate_size=int(t.get("intermediate_size", 22016)),
            num_layers=int(t.get("num_hidden_layers", 32)),
            num_heads=heads,
            num_kv_heads=int(t.get("num_key_value_heads") or heads),
            head_dim=int(t.get("head_dim") or 128),
            rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 500000.0))),
            mrope_section=tuple(int(x) for x in rope.get("mrope_section", (24, 20, 20))),  # type: ignore[arg-type]
            hidden_act=str(t.get("hidden_act", "silu")),
            attention_bias=bool(t.get("attention_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
        )
        vis_rope = v.get("rope_parameters") or {}
        vision = Qwen3VLVisionConfig(
            depth=int(v.get("depth", 27)),
            hidden_size=int(v.get("hidden_size", 1152)),
            intermediate_size=int(v.get("intermediate_size", 4304)),
            num_heads=int(v.get("num_heads", 16)),
            in_channels=int(v.get("in_channels", 3)),
            patch_size=int(v.get("patch_size", 16)),
            temporal_patch_size=int(v.get("temporal_patch_size", 2)),
            spatial_merge_size=int(v.get("spatial_merge_size", 2)),
            out_hidden_size=int(v.get("out_hidden_size", 3584)),
            num_position_embeddings=int(v.get("num_position_embeddings", 2304)),
            deepstack_visual_indexes=tuple(int(i) for i in v.get("deepstack_visual_indexes", (8, 16, 24))),
            hidden_act=str(v.get("hidden_act", "gelu_pytorch_tanh")),
            rope_theta=float(vis_rope.get("rope_theta", 10000.0)),
        )
        eos = t.get("eos_token_id", hf.get("eos_token_id", QWEN_EOS_TOKEN_ID))
        if isinstance(eos, Sequence):
            eos = eos[0]
        bos = t.get("bos_token_id", hf.get("bos_token_id", QWEN_BOS_TOKEN_ID))
        pad = t.get("pad_token_id", hf.get("pad_token_id"))
        fields: dict[str, Any] = dict(
            vision=vision,
            text=text,
            image_token_id=int(hf.get("image_token_id", QWEN_IMAGE_TOKEN_ID)),
            video_token_id=int(hf.get("video_token_id", QWEN_VIDEO_TOKEN_ID)),
            vision_start_token_id=int(hf.get("vision_start_token_id", QWEN_VISION_START_TOKEN_ID)),
            vision_end_token_id=int(hf.get("vision_end_token_id", QWEN_VISION_END_TOKEN_ID)),
            eos_token_id=int(eos if eos is not None else QWEN_EOS_TOKEN_ID),
            bos_token_id=int(bos) if bos is not None else QWEN_BOS_TOKEN_ID,
            pad_token_id=int(pad) if pad is not None else int(bos if bos is not None else QWEN_BOS_TOKEN_ID),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The released nested `config.json` layout (`text_config`, `vision_config`)."""
        v, t = self.vision, self.text
        return {
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": t.tie_word_embeddings,
            "dtype": self.param_dtype,
            "text_config": {
                "model_type": "qwen3_vl_text",
                "attention_bias": t.attention_bias,
                "attention_dropout": 0.0,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id,
                "head_dim": t.head_dim,
                "hidden_act": t.hidden_act,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "max_position_embeddings": 262144,
                "num_attention_heads": t.num_heads,
                "num_hidden_layers": t.num_layers,
                "num_key_value_heads": t.num_kv_heads,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": t.rope_theta,
                    "mrope_section": list(t.mrope_section),
                    "mrope_interleaved": True,
                },
                "tie_word_embeddings": t.tie_word_embeddings,
                "vocab_size": t.vocab_size,
            },
            "vision_config": {
                "model_type": "qwen3_vl",
                "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
                "depth": v.depth,
                "hidden_act": v.hidden_act,
                "hidden_size": v.hidden_size,
                "in_channels": v.in_channels,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "num_position_embeddings": v.num_position_embeddings,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "temporal_patch_size": v.temporal_patch_size,
            },
        }


def _validate(config: Qwen3VLConfig) -> None:
    """Fails on an inconsistent config with the field name and value, before anything compiles."""
    v, t = config.vision, config.text

    def need(ok: bool, field: str, value: Any, why: str) -> None:
        if not ok:
            raise ValueError(f"Qwen3VLConfig.{field}={value!r}: {why}")

    need(v.hidden_size % v.num_heads == 0, "vision.hidden_size", v.hidden_size,
         f"must be divisible by vision.num_heads={v.num_heads}")
    need(v.head_dim % 4 == 0, "vision.num_heads", v.num_heads,
         f"vision head_dim={v.head_dim} must be a multiple of 4 for the 2-D rotary")
    side = v.num_grid_per_side
    need(side >= 1 and side * side == v.num_position_embeddings, "vision.num_position_embeddings",
         v.num_position_embeddings, "must be a perfect square (the learned position grid)")
    need(all(0 <= i < v.depth for i in v.deepstack_visual_indexes), "vision.deepstack_visual_indexes",
         v.deepstack_visual_indexes, f"indices must lie in [0, vision.depth={v.depth})")
    need(len(v.deepstack_visual_indexes) <= t.num_layers, "vision.deepstack_visual_indexes",
         v.deepstack_visual_indexes, f"more DeepStack levels than text.num_layers={t.num_layers}")
    need(v.out_hidden_size == t.hidden_size, "vision.out_hidden_size", v.out_hidden_size,
         f"must equal text.hidden_size={t.hidden_size}")
    need(t.num_heads % t.num_kv_heads == 0, "text.num_kv_heads", t.num_kv_heads,
         f"must divide text.num_heads={t.num_heads}")
    need(t.head_dim % 2 == 0, "text.head_dim", t.head_dim, "must be even (rotary)")
    sec = t.mrope_section
    need(len(sec) == 3 and sum(sec) == t.head_dim // 2,
         "text.mrope_section", sec, f"needs 3 parts summing to head_dim/2={t.head_dim // 2}")
    for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "eos_token_id",
                 "pad_token_id"):
        value = getattr(config, name)
        need(0 <= value < t.vocab_size, name, value, f"must lie in the vocabulary [0, text.vocab_size={t.vocab_size})")
    for name in ("dtype", "param_dtype"):
        need(getattr(config, name) in ("float32", "bfloat16", "float16"), name, getattr(config, name),
             "expected float32, bfloat16 or float16")
    need(config.attention_backend in (None, "reference", "xla", "pallas_tpu", "pallas_gpu"), "attention_backend",
         config.attention_backend, "expected None, 'reference', 'xla', 'pallas_tpu' or 'pallas_gpu'")
    need(config.remat_policy in REMAT_POLICIES, "remat_policy", config.remat_policy,
         f"expected one of {', '.join(map(repr, REMAT_POLICIES))}")
    need(isinstance(config.scan_layers, bool), "scan_layers", config.scan_layers, "expected True or False")
    need(math.isfinite(t.rope_theta) and t.rope_theta > 0, "text.rope_theta", t.rope_theta, "must be positive")


def qwen3_vl_tiny() -> Qwen3VLConfig:
    """Toy width, same code path as the released models; uses the built-in tokenizer's ids."""
    return Qwen3VLConfig(
        vision=Qwen3VLVisionConfig(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            num_position_embeddings=64, deepstack_visual_indexes=(0, 1),
        ),
        text=Qwen3VLTextConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
            num_kv_heads=2, head_dim=16, mrope_section=(4, 2, 2), tie_word_embeddings=True,
        ),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        video_token_id=TINY_VIDEO_TOKEN_ID,
        vision_start_token_id=TINY_VISION_START_TOKEN_ID,
        vision_end_token_id=TINY_VISION_END_TOKEN_ID,
        eos_token_id=TINY_EOS_TOKEN_ID,
        bos_token_id=TINY_BOS_TOKEN_ID,
        pad_token_id=TINY_PAD_TOKEN_ID,
    )


def _released(text: dict[str, Any], vision: dict[str, Any]) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        vision=Qwen3VLVisionConfig(**vision),
        text=Qwen3VLTextConfig(vocab_size=151936, rope_theta=5_000_000.0, mrope_section=(24, 20, 20),
                               head_dim=128, **text),
        param_dtype="bfloat16",
        dtype="bfloat16",
    )


def qwen3_vl_2b() -> Qwen3VLConfig:
    """Qwen3-VL-2B-Instruct, as in its released config.json (tied embeddings)."""
    return _released(
        dict(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16, num_kv_heads=8,
             tie_word_embeddings=True),
        dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
             deepstack_visual_indexes=(5, 11, 17)),
    )


def qwen3_vl_4b() -> Qwen3VLConfig:
    """Qwen3-VL-4B-Instruct, as in its released config.json (tied embeddings)."""
    return _released(
        dict(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8,
             tie_word_embeddings=True),
        dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
             deepstack_visual_indexes=(5, 11, 17)),
    )


def qwen3_vl_8b() -> Qwen3VLConfig:
    """Qwen3-VL-8B-Instruct, as in its released config.json (untied lm_head)."""
    return _released(
        dict(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8,
             tie_word_embeddings=False),
        dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
             deepstack_visual_indexes=(8, 16, 24)),
    )


PRESETS = {"qwen3_vl_tiny": qwen3_vl_tiny, "qwen3_vl_2b": qwen3_vl_2b, "qwen3_vl_4b": qwen3_vl_4b,
           "qwen3_vl_8b": qwen3_vl_8b}


def get_preset(name: str) -> Qwen3VLConfig:
    """Returns the named preset: one of `qwen3_vl_tiny`, `qwen3_vl_2b`, `qwen3_vl_4b`, `qwen3_vl_8b`."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"Qwen3-VL preset {name!r} is unknown; choose one of {sorted(PRESETS)}") from None
