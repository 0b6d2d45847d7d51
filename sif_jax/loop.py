"""The training loop every phase shares: resume, preemption, checkpoints, progress and metric rows.

A phase (SFT, GRPO) is a step function `step_fn(state, step) -> (state, metrics)` plus the
checkpoint metadata of its state (`Phase.metadata`, e.g. the data iterator's position) and how to
take it back (`Phase.restore`). `run_loop` owns the rest:

  * resume: the newest checkpoint of `Phase.checkpointer` is restored ("<name>: resumed from step N
    of M") and the metric rows of later steps (written after that checkpoint) are dropped;
  * a checkpoint every `checkpoint_every` steps, and always after the last step and after a SIGTERM;
  * SIGTERM on any host (`checkpoint.PreemptionGuard`): all hosts stop after the same step, save it
    and exit with status 143 (128 + SIGTERM), which a scheduler reads as "preempted, restart me";
  * a tqdm bar, a log line every `log_every` steps, and one metric row per step: `MetricsWriter`
    appends it to `<workdir>/<name>.jsonl` and writes each numeric field as a TensorBoard scalar.

Metric history lives in the metrics file only, not in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from sif_jax import parallel
from sif_jax.checkpoint import Checkpointer, PreemptionGuard, abstract_with_shardings

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM

StepFn = Callable[[Any, int], tuple[Any, dict[str, Any]]]


def _numeric(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


class MetricsWriter:
    """Metric rows of one phase: JSON lines in `<workdir>/<name>.jsonl` and TensorBoard scalars in
    `<workdir>/tensorboard/<tensorboard>/` (process 0 only; `tensorboard --logdir <workdir>/tensorboard`).

    Local files are appended to row by row. Object stores (gs://) cannot append: there rows are
    buffered and the file is rewritten at each `flush` (the loop flushes when it saves a checkpoint,
    so the file matches the saved state, and at the end), not at every step. Each numeric field of
    a row (ints and floats; not `step`) becomes one scalar with the field's name as its tag, at the
    row's `step`.
    """

    def __init__(self, workdir: str, name: str = "metrics", *, tensorboard: str | None = None,
                 remote: bool | None = None, enabled: bool | None = None) -> None:
        self.path = epath.Path(workdir) / f"{name}.jsonl"
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.remote = "://" in str(workdir) if remote is None else remote
        self._lines: list[str] = []  # remote: every row of the file, flushed or not
        self._dirty = False
        self._tb: Any = None
        self._tb_logdir = str(epath.Path(workdir) / "tensorboard" / tensorboard) if tensorboard else ""
        self._purge_step: int | None = None

    def _tensorboard(self) -> Any:
        """The event-file writer, opened at the first row. After a resume from step N its purge step
        is N + 1: TensorBoard drops the events of later steps written before the resume."""
        if self._tb is None and self._tb_logdir:
            try:  # gs:// logdirs need google-cloud-storage (tensorboardX's GCS writer)
                from tensorboardX import SummaryWriter

                # a unique suffix: a writer reopened within the same second (a quick resume) must
                # not overwrite the previous file, whose name holds only the time in seconds
                self._tb = SummaryWriter(self._tb_logdir, purge_step=self._purge_step,
                                         filename_suffix=f".{time.time_ns()}")
            except ImportError as e:
                logging.warning("no TensorBoard events in %s: %s", self._tb_logdir, e)
                self._tb_logdir = ""
        return self._tb

    def resume(self, step: int) -> list[dict[str, Any]]:
        """The rows of steps <= `step` already in the file (the run resumes after `step`); rows of
        later steps, written after the checkpoint the run resumes from, are removed from it."""
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()] \
            if self.path.exists() else []
        kept = [r for r in rows if r.get("step", 0) <= step]
        self._purge_step = step + 1 if step > 0 else None
        self._lines = [json.dumps(r, sort_keys=True) for r in kept] if self.remote else []
        if self.enabled and len(kept) != len(rows):
            self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        return kept

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(row, sort_keys=True)
        if self.remote:
            self._lines.append(line)
            self._dirty = True
        else:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        tb = self._tensorboard()
        if tb is not None:
            for key, value in row.items():
                if key != "step" and _numeric(value) and math.isfinite(value):
                    tb.add_scalar(key, float(value), global_step=row["step"])

    def flush(self) -> None:
        if not self.enabled:
            return
        if self.remote and self._dirty:
            self.path.write_text("".join(line + "\n" for line in self._lines))
            self._dirty = False
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


@dataclasses.dataclass
class Phase:
    """What `run_loop` needs of a phase besides its step function.

    name: for messages ("SFT", "GRPO"). steps: the phase's total number of steps. checkpointer: its
    checkpoint directory. writer: its metric rows. metadata: the checkpoint metadata of the state
    just stepped (called after each step; JSON-serialisable). restore: takes back the metadata of a
    restored checkpoint (e.g. `data_iter.set_state`). desc: the progress bar's label. postfix: the
    bar's fields from a row. log_line: a log line from a row, printed every `log_every` steps.
    """

    name: str
    steps: int
    checkpointer: Checkpointer
    writer: MetricsWriter
    metadata: Callable[[], dict[str, Any]]
    restore: Callable[[dict[str, Any]], None] = lambda meta: None
    desc: str = ""
    postfix: Callable[[dict[str, Any]], dict[str, str]] | None = None
    log_line: Callable[[dict[str, Any]], str] | None = None
    log_every: int = 0


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """state: after the last step; rows: the metric rows of every step so far (resumed ones too);
    start: the step the loop resumed from (0 = fresh)."""

    state: Any
    rows: list[dict[str, Any]]
    start: int


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars `MetricsWriter` wrote under `logdir` (`<workdir>/tensorboard/<phase>`): tag ->
    [(step, value)] in step order, as TensorBoard shows them. A session start at step N (written
    after a resume) drops the earlier events of steps >= N, TensorBoard's purge rule. Reads the
    TFRecord framing (u64 length, u32 crc, payload, u32 crc; crcs not checked) with
    tensorboardX's Event protobuf; no TensorFlow needed. Local paths only."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def say(line: str) -> None:
    """A line on stdout (process 0), above the progress bar."""
    if jax.process_index() == 0:
        tqdm.write(line)


def run_loop(phase: Phase, state: Any, step_fn: StepFn, *, stop_after: int | None = None) -> LoopResult:
    """Steps `state` from the newest checkpoint (or step 0) to `phase.steps`.

    `step_fn(state, step)` runs step `step` (0-based) and returns the new state and its metrics (a
    dict of floats); the row written is `{"step": step + 1, **metrics, "seconds": wall time}`.
    `stop_after` ends the loop after that many steps, with a forced save, as a preemption would.
    `state` is also the template a checkpoint is restored onto (its shapes and shardings). On
    SIGTERM the step in flight finishes, is saved, and the process exits with status 143
    (`SystemExit`). The checkpointer and writer are closed on return and on error.
    """
    ckpt, writer = phase.checkpointer, phase.writer
    start = 0
    try:
        if ckpt.latest_step() is not None:
            start, state, meta = ckpt.restore(abstract_with_shardings(state))
            phase.restore(meta)
            say(f"{phase.name}: resumed from step {start} of {phase.steps} ({ckpt.directory})")
        rows = writer.resume(start)
        if start >= phase.steps:
            return LoopResult(state, rows, start)
        preempted, done = False, start
        bar = tqdm(range(start, phase.steps), desc=phase.desc or phase.name, initial=start, total=phase.steps,
                   disable=jax.process_index() != 0)
        with PreemptionGuard() as guard:
            for step in bar:
                t0 = time.perf_counter()
                state, metrics = step_fn(state, step)
                row = {"step": step + 1, **metrics, "seconds": time.perf_counter() - t0}
                rows.append(row)
                writer.write(row)
                if phase.postfix is not None:
                    bar.set_postfix(phase.postfix(row))
                if phase.log_line is not None and phase.log_every and (step + 1) % phase.log_every == 0:
                    say(phase.log_line(row))
                done = step + 1
                preempted = parallel.any_process(guard.requested)  # all hosts stop at the same step
                stop = preempted or (stop_after is not None and done >= stop_after)
                if ckpt.save(done, state, phase.metadata(), force=stop or done == phase.steps):
                    writer.flush()
                if stop:
                    break
    finally:  # waits for in-flight async saves even when a step raises, so no save is cut off
        ckpt.close()
        writer.close()
    if preempted:
        logging.warning("SIGTERM: %s state saved at step %d", phase.name, done)
        sys.exit(PREEMPTED_EXIT_CODE)
    return LoopResult(state, rows, start)
