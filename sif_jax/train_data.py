"""The data side of a run: sources, tokenizer and grain iterators chosen by the run config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import ml_collections

from sif_jax.data import pipeline
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer, Tokenizer
from sif_jax.model.config import ModelConfig

# Eval examples come from the "test" split (scene seeds offset by pipeline.TEST_SEED_OFFSET), so
# they never coincide with training scenes.
TRAIN_SIZE = 1_000_000


class TrainData:
    """Builds the train / eval data of a run; iterators are checkpointable (get_state/set_state)."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config
        self.tokenizer: Tokenizer = self._tokenizer(config)
        self.model: ModelConfig | None = None
        self._train_source, self._eval_source = self._sources()

    @staticmethod
    def _tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
        """The run's tokenizer.json read by the model family's tokenizer, else the built-in one."""
        if not config.tokenizer:
            return BuiltinTokenizer()
        from sif_jax.model.family import family_of, get_preset

        return family_of(get_preset(config.model)).load_tokenizer(config.tokenizer)

    def _sources(self) -> tuple[Any, Any]:
        data = self.config.data
        if data.source == "builtin":
            scene = SceneConfig(height=data.image_size, width=data.image_size)
            return (pipeline.BuiltinSource(seed=self.config.seed, size=TRAIN_SIZE, split="train", scene_config=scene),
                    pipeline.BuiltinSource(seed=self.config.seed, size=max(1, data.eval_examples), split="test",
                                           scene_config=scene))
        kind, _, location = data.source.partition(":")
        if kind == "tfds":
            if not os.path.isdir(location):
                raise ValueError(f"config.data.source={data.source!r}: {location!r} is not a directory")
            name = "sif_spatial/small"
            return (pipeline.TfdsSource(name, split="train", data_dir=location),
                    pipeline.TfdsSource(name, split="test", data_dir=location))
        raise ValueError(f"config.data.source={data.source!r}: not supported by the trainer yet")

    def check_model(self, model: ModelConfig) -> None:
        """The tokenizer must fit the model's vocabulary and special ids."""
        self.model = model
        tok = self.tokenizer
        if tok.vocab_size > model.text.vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} tokens; the model's vocabulary has "
                             f"{model.text.vocab_size}")
        for name, model_id in (("image_pad_id", model.image_token_id), ("eos_id", model.eos_token_id)):
            if getattr(tok, name) != model_id:
                raise ValueError(f"tokenizer {name}={getattr(tok, name)} but the model config says {model_id}")

    def _preprocessor(self) -> pipeline.Preprocessor:
        assert self.model is not None, "call check_model first"
        return pipeline.Preprocessor(self.tokenizer, self.model)

    def _dataset(self, source: Any, *, batch_size: int, repeat: int, sft: bool, shuffle: bool,
                 num_epochs: int | None, seed: int) -> Any:
        data = self.config.data
        return pipeline.make_dataset(
            source, self._preprocessor(), batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
            repeat=repeat, sft=sft, length_buckets=tuple(data.length_buckets),
            patch_buckets=tuple(data.patch_buckets), drop_remainder=shuffle,
        )

    def sft_iterator(self, batch_size: int) -> Iterator[dict[str, Any]]:
        return iter(self._dataset(self._train_source, batch_size=batch_size, repeat=1, sft=True, shuffle=True,
                                  num_epochs=None, seed=self.config.seed))

    def grpo_iterator(self, prompts_per_step: int) -> Iterator[dict[str, Any]]:
        """Yields micro-batches of `grpo.micro_batch_prompts` prompts x G rows; a step takes
        `prompts_per_step / micro_batch_prompts` of them."""
        g = self.config.grpo
        return iter(self._dataset(self._train_source, batch_size=g.micro_batch_prompts, repeat=g.group_size,
                                  sft=False, shuffle=True, num_epochs=None, seed=self.config.seed + 1))

    def eval_batches(self, batch_size: int = 16) -> Iterator[dict[str, Any]]:
        if self.config.data.eval_examples <= 0:
            return iter(())
        return iter(self._dataset(self._eval_source, batch_size=batch_size, repeat=1, sft=False, shuffle=False,
                                  num_epochs=1, seed=0))
