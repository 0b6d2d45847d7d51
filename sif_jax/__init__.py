"""sif_jax: train vision-language models to look at the right place before they answer."""

__version__ = "0.1.0"
