"""LLaVA-1.5 (CLIP ViT-L/14-336 + two-layer GELU projector + LLaMA-2), registered as family "llava"."""
