"""HF LLaVA safetensors names <-> params of `sif_jax.model.llava.model.Llava`.

Written in the layout transformers' `save_pretrained` writes (`vision_tower.*`,
`multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.weight`); read in that
one, in the released llava-hf layout (`vision_tower.vision_model.*`) and in the module layout of
transformers >= 5 (`model.vision_tower.*`, `model.multi_modal_projector.*`,
`model.language_model.*`, `lm_head.weight`).
"""

from __future__ import annotations

from sif_jax.convert.hf import Rule, _heads_bias, _heads_in, _heads_out, _same, _t, compile_rules

_Q = lambda c: (c.text.num_heads, c.text.head_dim)  # noqa: E731
_KV = lambda c: (c.text.num_kv_heads, c.text.head_dim)  # noqa: E731
_VIS = lambda c: (c.vision.num_heads, c.vision.head_dim)  # noqa: E731


def _patch_embedding():
    """Conv2d weight [E, C, P, P] <-> Dense kernel [C*P*P, E] (patches flattened in (C, P, P) order)."""
    def to_jax(x, c):
        return x.reshape(x.shape[0], -1).T

    def to_hf(x, c):
        v = c.vision
        return x.T.reshape(x.shape[1], v.num_channels, v.patch_size, v.patch_size)

    return to_jax, to_hf


V = "vision_tower."
VL = V + "encoder.layers.{0}."
T = "language_model.model."
_RULES = [
    Rule(V + "embeddings.class_embedding", "vision_tower/class_embedding", _same, _same),
    Rule(V + "embeddings.patch_embedding.weight", "vision_tower/patch_embedding/kernel", *_patch_embedding()),
    Rule(V + "embeddings.position_embedding.weight", "vision_tower/position_embedding/embedding", _same, _same),
    Rule(V + "pre_layrnorm.weight", "vision_tower/pre_layrnorm/scale", _same, _same),
    Rule(V + "pre_layrnorm.bias", "vision_tower/pre_layrnorm/bias", _same, _same),
    Rule(V + "post_layernorm.weight", "vision_tower/post_layernorm/scale", _same, _same),
    Rule(V + "post_layernorm.bias", "vision_tower/post_layernorm/bias", _same, _same),
    Rule(VL + "self_attn.out_proj.weight", "vision_tower/layers_{0}/out_proj/kernel", *_heads_out(_VIS)),
    Rule(VL + "self_attn.out_proj.bias", "vision_tower/layers_{0}/out_proj/bias", _same, _same),
    *(Rule(VL + f"self_attn.{p}.weight", f"vision_tower/layers_{{0}}/{p}/kernel", *_heads_in(_VIS))
      for p in ("q_proj", "k_proj", "v_proj")),
    *(Rule(VL + f"self_attn.{p}.bias", f"vision_tower/layers_{{0}}/{p}/bias", *_heads_bias(_VIS))
      for p in ("q_proj", "k_proj", "v_proj")),
    Rule(VL + "layer_norm{1}.weight", "vision_tower/layers_{0}/layer_norm{1}/scale", _same, _same),
    Rule(VL + "layer_norm{1}.bias", "vision_tower/layers_{0}/layer_norm{1}/bias", _same, _same),
    Rule(VL + "mlp.fc{1}.weight", "vision_tower/layers_{0}/fc{1}/kernel", _t, _t),
    Rule(VL + "mlp.fc{1}.bias", "vision_tower/layers_{0}/fc{1}/bias", _same, _same),
    Rule("multi_modal_projector.linear_{0}.weight", "projector/linear_{0}/kernel", _t, _t),
    Rule("multi_modal_projector.linear_{0}.bias", "projector/linear_{0}/bias", _same, _same),
    Rule(T + "embed_tokens.weight", "text/embed_tokens/embedding", _same, _same),
    Rule(T + "norm.weight", "text/final_norm/scale", _same, _same),
    Rule("language_model.lm_head.weight", "text/lm_head/kernel", _t, _t),
    Rule(T + "layers.{0}.input_layernorm.weight", "text/layers_{0}/input_norm/scale", _same, _same),
    Rule(T + "layers.{0}.post_attention_layernorm.weight", "text/layers_{0}/post_attn_norm/scale", _same, _same),
    Rule(T + "layers.{0}.self_attn.q_proj.weight", "text/layers_{0}/q_proj/kernel", *_heads_in(_Q)),
    Rule(T + "layers.{0}.self_attn.k_proj.weight", "text/layers_{0}/k_proj/kernel", *_heads_in(_KV)),
    Rule(T + "layers.{0}.self_attn.v_proj.weight", "text/layers_{0}/v_proj/kernel", *_heads_in(_KV)),
    Rule(T + "layers.{0}.self_attn.o_proj.weight", "text/layers_{0}/o_proj/kernel", *_heads_out(_Q)),
    Rule(T + "layers.{0}.mlp.{1}.weight", "text/layers_{0}/mlp/{1}/kernel", _t, _t),
]
COMPILED = compile_rules(_RULES)

# other layouts' prefixes -> the written layout's (first match wins)
_PREFIXES = (
    ("model.vision_tower.vision_model.", V),
    ("vision_tower.vision_model.", V),
    ("model.vision_tower.", V),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", T),
    ("lm_head.", "language_model.lm_head."),
)


def canonical_name(name: str) -> str:
    """Maps the other layouts (module doc) onto the one written."""
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name
