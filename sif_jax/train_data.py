"""The data side of a run: sources (`data.sources`), prompt, tokenizer and grain iterators chosen by
the run config. File sources are split into training and held-out records (`sources.split_records`)
unless `data.eval_source` names the held-out data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sif_jax.batch import Batch
from sif_jax.data import pipeline, sources
from sif_jax.data.captions import CaptionMix
from sif_jax.data.prompts import get_prompt
from sif_jax.data.scenes import SceneConfig
from sif_jax.data.tokenizer import BuiltinTokenizer, Tokenizer, check_tokenizer
from sif_jax.model.config import ModelConfig

if TYPE_CHECKING:
    from sif_jax.run_config import RunConfig

# Eval examples come from the "test" split (scene seeds offset by pipeline.TEST_SEED_OFFSET), so
# they never coincide with training scenes.
TRAIN_SIZE = 1_000_000


class _Head:
    """The first `n` examples of a source."""

    def __init__(self, source: Any, n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= int(index) < self.n:
            raise IndexError(index)
        return self.source[index]


class TrainData:
    """Builds the train / eval data of a run (a typed `run_config.RunConfig`); iterators are
    checkpointable (get_state/set_state)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.tokenizer: Tokenizer = self._tokenizer(config)
        self.model: ModelConfig | None = None
        self._train_source, self._eval_source = self._sources()
        if config.sft.steps > 0 and not config.model.init_checkpoint:
            self.sft_source()  # no traces to imitate: an error now, not after compiling

    @staticmethod
    def _tokenizer(config: RunConfig) -> Tokenizer:
        """The run's tokenizer.json read by the model family's tokenizer, else ("" or "builtin"; with
        `train._setup` taking the one of config.init_checkpoint for "") the built-in one."""
        if config.model.tokenizer in ("", "builtin"):
            return BuiltinTokenizer()
        from sif_jax.model.family import family_of, get_preset

        return family_of(get_preset(config.model.preset)).load_tokenizer(config.model.tokenizer)

    def _sources(self) -> tuple[Any, Any]:
        """(train, held-out) raw-example sources of `config.data.source` (`data.sources`)."""
        data = self.config.data
        kind, _ = sources.check_spec(data.source)
        eval_spec = data.eval_source
        if kind == "builtin":
            scene = SceneConfig(height=data.image_size, width=data.image_size)
            train = pipeline.BuiltinSource(seed=self.config.seed, size=TRAIN_SIZE, split="train", scene_config=scene)
            held = pipeline.BuiltinSource(seed=self.config.seed, size=max(1, data.eval_examples), split="test",
                                          scene_config=scene)
        elif kind == "tfds":
            train, held = sources.tfds_train_and_held(data.source, 0 if eval_spec else data.eval_examples)
        else:
            strict = data.strict_records
            records = sources.read_records(data.source, progress=True)
            good, skipped = sources.usable(records, data.source, strict=strict)
            sources.report_skipped(data.source, skipped)
            train_records, held_records = sources.split_records(
                good, 0 if eval_spec else data.eval_examples, self.config.seed)
            train = sources.RecordSource(train_records, skipped, with_traces=True)
            held = sources.RecordSource(held_records)
        if eval_spec:
            held = self._eval_from(eval_spec)
        if held is not None and data.eval_examples > 0 and len(held) > data.eval_examples:
            held = _Head(held, data.eval_examples)
        return train, held

    def _eval_from(self, spec: str) -> Any:
        kind, _ = sources.check_spec(spec, "config.data.eval_source")
        if kind == "builtin":
            raise ValueError(f"config.data.eval_source={spec!r}: leave it empty for the built-in task")
        if kind == "tfds":
            return sources.tfds_source(spec, "test", "config.data.eval_source")
        src = sources.open_records(spec, strict=bool(self.config.data.strict_records), progress=True,
                                   field="config.data.eval_source")
        sources.report_skipped(spec, src.skipped)
        return src

    def sft_source(self) -> Any:
        """The SFT examples: the training source, less records without an assistant trace (GQA, SAYO,
        VSR and WhatsUp carry none). ValueError when none is left."""
        src = self._train_source
        fraction = self.config.sft.caption_fraction
        if fraction > 0:  # the built-in task (checked by run_config)
            return CaptionMix(src, fraction, seed=self.config.seed)
        if not isinstance(src, sources.RecordSource):
            return src
        with_trace = [r for r in src.records if sources.assistant_trace(r)]
        if not with_trace:
            raise ValueError(f"config.sft.steps={self.config.sft.steps}: config.data.source="
                             f"{self.config.data.source!r} has no assistant traces to imitate (SIF-50K records "
                             "carry them in 'messages'); set --config.sft.steps=0 to run GRPO only")
        return sources.RecordSource(with_trace, src.skipped, with_traces=True)

    def check_model(self, model: ModelConfig) -> None:
        """The tokenizer must fit the model's vocabulary and special ids (`tokenizer.check_tokenizer`)."""
        self.model = model
        check_tokenizer(self.tokenizer, model, what="config.tokenizer")

    def _preprocessor(self) -> pipeline.Preprocessor:
        assert self.model is not None, "call check_model first"
        prompt = get_prompt(self.config.data.prompt)
        return pipeline.Preprocessor(self.tokenizer, self.model, pipeline.PreprocessConfig.from_prompt(
            prompt, min_pixels=self.config.data.min_pixels, max_pixels=self.config.data.max_pixels))

    def _dataset(self, source: Any, *, batch_size: int, repeat: int, sft: bool, shuffle: bool,
                 num_epochs: int | None, seed: int) -> Any:
        data = self.config.data
        return pipeline.make_dataset(
            source, self._preprocessor(), batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
            repeat=repeat, sft=sft, length_buckets=tuple(data.length_buckets),
            patch_buckets=tuple(data.patch_buckets), drop_remainder=shuffle,
        )

    def sft_iterator(self, batch_size: int) -> Iterator[Batch]:
        return iter(self._dataset(self.sft_source(), batch_size=batch_size, repeat=1, sft=True, shuffle=True,
                                  num_epochs=None, seed=self.config.seed))

    def grpo_iterator(self, prompts_per_step: int) -> Iterator[Batch]:
        """Yields micro-batches of `grpo.micro_batch_prompts` prompts x G rows; a step takes
        `prompts_per_step / micro_batch_prompts` of them."""
        g = self.config.grpo
        return iter(self._dataset(self._train_source, batch_size=g.micro_batch_prompts, repeat=g.group_size,
                                  sft=False, shuffle=True, num_epochs=None, seed=self.config.seed + 1))

    def eval_batches(self, batch_size: int = 16) -> Iterator[Batch]:
        if self.config.data.eval_examples <= 0 or self._eval_source is None or not len(self._eval_source):
            return iter(())
        return iter(self._dataset(self._eval_source, batch_size=batch_size, repeat=1, sft=False, shuffle=False,
                                  num_epochs=1, seed=0))
