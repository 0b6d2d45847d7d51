"""LLaVA-1.5 configuration: CLIP ViT-L/14-336 vision tower, two-layer GELU projector, LLaMA-2 decoder.

Field names follow the Qwen2.5-VL config (`config.text.num_layers`, `config.image_token_id`, ...)
so that sampler, scoring and training read either family the same way. LLaVA has no video or
vision start/end tokens: those ids are -1 (outside every vocabulary, so nothing bans or matches them).

Presets: `llava_1_5_7b` and `llava_1_5_13b` carry the sizes of the released
`llava-hf/llava-1.5-{7b,13b}-hf` `config.json` files; `llava_1_5_tiny` keeps every code path
(CLIP with class token and learned positions, feature layer -2, CLS dropped, projector, LLaMA
decoder with 1-D RoPE) at toy width, with the ids of the built-in tokenizer
(`sif_jax.data.tokenizer.BuiltinTokenizer`), so it trains on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sif_jax.model.config import REMAT_POLICIES

# Released llava-hf/llava-1.5-*-hf special-token ids (LLaMA-2 tokenizer + <image> and <pad>).
LLAVA_IMAGE_TOKEN_ID = 32000
LLAVA_PAD_TOKEN_ID = 32001
LLAVA_BOS_TOKEN_ID = 1
LLAVA_EOS_TOKEN_ID = 2
NO_TOKEN = -1

# CLIPImageProcessor settings of the released LLaVA-1.5 processor (OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """The CLIP vision transformer (HF `CLIPVisionConfig`); defaults: ViT-L/14 at 336 px."""

    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per image side (24 for 336 px / 14 px)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def cell_size(self) -> int:
        """Side in pixels of the image cell that becomes one LLM visual token (the patch, 14 px)."""
        return self.patch_size


@dataclasses.dataclass(frozen=True)
class LlamaTextConfig:
    """The LLaMA-2 decoder (HF `LlamaConfig`): 1-D RoPE, RMSNorm, SwiGLU, no biases."""

    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """A LLaVA-1.5 model (HF `LlavaForConditionalGeneration`).

    `vision_feature_layer` indexes CLIP's hidden states (index 0 = the embeddings after the
    pre-norm, i = the output of encoder layer i; -2 = the second-to-last layer's input to the
    last layer); `vision_feature_select_strategy` "default" drops the class token, "full" keeps it.
    Each image becomes `image_seq_length` features (576 at 336 px). dtype / param_dtype /
    attention_backend / scan_layers / remat_policy mean what they mean in `ModelConfig`.
    """

    family: ClassVar[str] = "llava"

    vision: ClipVisionConfig = ClipVisionConfig()
    text: LlamaTextConfig = LlamaTextConfig()
    image_token_id: int = LLAVA_IMAGE_TOKEN_ID
    bos_token_id: int = LLAVA_BOS_TOKEN_ID
    eos_token_id: int = LLAVA_EOS_TOKEN_ID
    pad_token_id: int = LLAVA_PAD_TOKEN_ID
    video_token_id: int = NO_TOKEN
    vision_start_token_id: int = NO_TOKEN
    vision_end_token_id: int = NO_TOKEN
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_backend: str | None = None
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> LlavaConfig:
        return dataclasses.replace(self, **changes)

    @property
    def image_seq_length(self) -> int:
        """LLM tokens per image: the patches, plus the class token with strategy "full"."""
        return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

    @property
    def feature_layer_index(self) -> int:
        """`vision_feature_layer` as a non-negative index into the num_layers + 1 hidden states."""
        n = self.vision.num_layers + 1
        return self.vision_feature_layer % n

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> LlavaConfig:
        """Reads a Hugging Face LLaVA `config.json` (as a dict); missing keys take transformers'
        defaults (`LlavaConfig`, `CLIPVisionConfig`, `LlamaConfig`). Raises ValueError for another
        model_type, a non-LLaMA text model, a non-CLIP vision tower or an unsupported rope."""
        if hf.get("model_type") not in (None, "llava"):
            raise ValueError(f"config.json: model_type={hf.get('model_type')!r}, expected 'llava'")
        t: Mapping[str, Any] = hf.get("text_config") or {}
        v: Mapping[str, Any] = hf.get("vision_config") or {}
        if t.get("model_type", "llama") != "llama":
            raise ValueError(f"config.json: text_config.model_type={t.get('model_type')!r}, expected 'llama'")
        if v.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise ValueError(
                f"config.json: vision_config.model_type={v.get('model_type')!r}, expected 'clip_vision_model'")
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"config.json: text_config rope type {rope_type!r} is not supported (only default)")
        layer = hf.get("vision_feature_layer", -2)
        if isinstance(layer, Sequence):
            raise ValueError(f"config.json: vision_feature_layer={layer!r}: only a single layer is supported")
        for key in ("attention_bias", "mlp_bias"):
            if t.get(key):
                raise ValueError(f"config.json: text_config.{key}=true is not supported")
        heads = int(t.get("num_attention_heads", 32))
        if t.get("head_dim") not in (None, int(t.get("hidden_size", 4096)) // heads):
            raise ValueError(f"config.json: text_config.head_dim={t.get('head_dim')} != hidden_size / heads")
        text = LlamaTextConfig(
            vocab_size=int(t.get("vocab_size", 32000)),
            hidden_size=int(t.get("hidden_size", 4096)),
            intermediate_size=int(t.get("intermediate_size", 11008)),
            num_layers=int(t.get("num_hidden_layers", 32)),
            num_heads=heads,
            num_kv_heads=int(t.get("num_key_value_heads") or heads),
            rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 10000.0))),
            hidden_act=str(t.get("hidden_act", "silu")),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
            max_position_embeddings=int(t.get("max_position_embeddings", 2048)),
        )
        vision = ClipVisionConfig(
            image_size=int(v.get("image_size", 224)),
            patch_size=int(v.get("patch_size", 32)),
            num_channels=int(v.get("num_channels", 3)),
            hidden_size=int(v.get("hidden_size", 768)),
            intermediate_size=int(v.get("intermediate_size", 3072)),
            num_layers=int(v.get("num_hidden_layers", 12)),
            num_heads=int(v.get("num_attention_heads", 12)),
            layer_norm_eps=float(v.get("layer_norm_eps", 1e-5)),
            hidden_act=str(v.get("hidden_act", "quick_gelu")),
        )
        pad = hf.get("pad_token_id", t.get("pad_token_id"))
        eos = t.get("eos_token_id", hf.get("eos_token_id", LLAVA_EOS_TOKEN_ID))
        if isinstance(eos, Sequence):
            eos = eos[0]
        bos = t.get("bos_token_id", hf.get("bos_token_id", LLAVA_BOS_TOKEN_ID))
        fields: dict[str, Any] = dict(
            vision=vision, text=text,
            image_token_id=int(hf.get("image_token_id", hf.get("image_token_index", LLAVA_IMAGE_TOKEN_ID))),
            bos_token_id=int(bos if bos is not None else LLAVA_BOS_TOKEN_ID),
            eos_token_id=int(eos if eos is not None else LLAVA_EOS_TOKEN_ID),
            pad_token_id=int(pad) if pad is not None else 0,
            vision_feature_layer=int(layer),
            vision_feature_select_strategy=str(hf.get("vision_feature_select_strategy", "default")),
            projector_hidden_act=str(hf.get("projector_hidden_act", "gelu")),
            multimodal_projector_bias=bool(hf.get("multimodal_projector_bias", True)),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` transformers' `LlavaConfig` reads (nested text/vision configs)."""
        v, t = self.vision, self.text
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": self.image_token_id,
            "image_token_id": self.image_token_id,
            "pad_token_id": self.pad_token_id,
            "image_seq_length": self.image_seq_length,
            "projector_hidden_act": self.projector_hidden_act,
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "tie_word_embeddings": t.tie_word_embeddings,
            "torch_dtype": self.param_dtype,
            "text_config": {
                "model_type": "llama",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_kv_heads,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
                "hidden_act": t.hidden_act,
                "max_position_embeddings": t.max_position_embeddings,
                "attention_bias": False,
                "mlp_bias": False,
                "tie_word_embeddings": t.tie_word_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": v.num_channels,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_layers,
                "num_attention_heads": v.num_heads,
                "layer_norm_eps": v.layer_norm_eps,
                "hidden_act": v.hidden_act,
                "projection_dim": 768,
            },
        }


def _validate(config: LlavaConfig) -> None:
    """Fails on an inconsistent config with the field name and value, before anything compiles."""
    v, t = config.vision, config.text

    def need(ok: bool, field: str, value: Any, why: str) -> None:
        if not ok:
            raise ValueError(f"LlavaConfig.{field}={value!r}: {why}")

    need(v.hidden_size % v.num_heads == 0, "vision.hidden_size", v.hidden_size,
         f"must be divisible by vision.num_heads={v.num_heads}")
    need(v.image_size % v.patch_size == 0, "vision.image_size", v.image_size,
         f"must be a multiple of vision.patch_size={v.patch_size}")
    need(t.hidden_size % t.num_heads == 0, "text.hidden_size", t.hidden_size,
         f"must be divisible by text.num_heads={t.num_heads}")
    need(t.head_dim % 2 == 0, "text.num_heads", t.num_heads, f"head_dim={t.head_dim} must be even for RoPE")
    need(t.num_heads % t.num_kv_heads == 0, "text.num_kv_heads", t.num_kv_heads,
         f"must divide text.num_heads={t.num_heads}")
    need(-(v.num_layers + 1) <= config.vision_feature_layer <= v.num_layers, "vision_feature_layer",
         config.vision_feature_layer, f"must index the {v.num_layers + 1} CLIP hidden states")
    need(config.vision_feature_select_strategy in ("default", "full"), "vision_feature_select_strategy",
         config.vision_feature_select_strategy, "expected 'default' or 'full'")
    for name in ("image_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, name)
        need(0 <= value < t.vocab_size, name, value, f"must lie in the vocabulary [0, text.vocab_size={t.vocab_size})")
    for name in ("dtype", "param_dtype"):
        need(getattr(config, name) in ("float32", "bfloat16", "float16"), name,
             getattr(config, name), "expected float32, bfloat16 or float16")
    need(config.attention_backend in (None, "reference", "xla", "pallas_tpu", "pallas_gpu"),
         "attention_backend", config.attention_backend,
         "expected None, 'reference', 'xla', 'pallas_tpu' or 'pallas_gpu'")
    need(config.remat_policy in REMAT_POLICIES, "remat_policy", config.remat_policy,
         f"expected one of {', '.join(map(repr, REMAT_POLICIES))}")
    need(isinstance(config.scan_layers, bool), "scan_layers", config.scan_layers, "expected True or False")


def llava_1_5_7b() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf, as in its released config.json (Vicuna-7B v1.5 decoder)."""
    return LlavaConfig(param_dtype="bfloat16", dtype="bfloat16")


def llava_1_5_13b() -> LlavaConfig:
    """llava-hf/llava-1.5-13b-hf, as in its released config.json (Vicuna-13B v1.5 decoder)."""
    return LlavaConfig(
        text=LlamaTextConfig(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                             num_kv_heads=40),
        param_dtype="bfloat16", dtype="bfloat16",
    )


def llava_1_5_tiny() -> LlavaConfig:
    """Toy widths, same code path; 336 px images (24 x 24 cells of 14 px) and the built-in tokenizer's ids."""
    from sif_jax.model.config import TINY_BOS_TOKEN_ID, TINY_EOS_TOKEN_ID, TINY_IMAGE_TOKEN_ID, TINY_PAD_TOKEN_ID

    return LlavaConfig(
        vision=ClipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2),
        text=LlamaTextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                             num_kv_heads=4),
        image_token_id=TINY_IMAGE_TOKEN_ID, bos_token_id=TINY_BOS_TOKEN_ID, eos_token_id=TINY_EOS_TOKEN_ID,
        pad_token_id=TINY_PAD_TOKEN_ID,
    )


PRESETS = {"llava_1_5_tiny": llava_1_5_tiny, "llava_1_5_7b": llava_1_5_7b, "llava_1_5_13b": llava_1_5_13b}
