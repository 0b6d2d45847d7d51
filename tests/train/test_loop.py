"""sif_jax.loop: resume, forced saves, preemption exit code, metric rows (JSON lines + TensorBoard)."""

import glob
import json
import os
import signal
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from sif_jax.checkpoint import Checkpointer
from sif_jax.loop import PREEMPTED_EXIT_CODE, MetricsWriter, Phase, read_scalars, run_loop


def events(logdir: str) -> list[event_pb2.Event]:
    """The events of the TensorBoard event files under `logdir` (oldest file first), read with the
    TFRecord framing (u64 length, u32 crc, payload, u32 crc) and tensorboardX's Event protobuf."""
    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            out.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return out


def read_events(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the event files under `logdir`: tag -> [(step, value)]."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in events(logdir):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def rows_of(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_metric_rows_go_to_jsonl_and_tensorboard(tmp_path):
    writer = MetricsWriter(str(tmp_path), "metrics", tensorboard="grpo", enabled=True)
    rows = [{"step": 1, "reward": 0.5, "tas_mean": 0.25, "kl_mean": 0.0, "completion_length": 12,
             "clip_fraction_low": 0.125, "note": "text", "flag": True},
            {"step": 2, "reward": -1.5, "tas_mean": 0.75, "kl_mean": 0.01, "completion_length": 7,
             "clip_fraction_low": 0.0, "note": "text", "flag": False}]
    for row in rows:
        writer.write(row)
    writer.close()
    assert rows_of(tmp_path / "metrics.jsonl") == rows
    scalars = read_events(str(tmp_path / "tensorboard" / "grpo"))
    assert set(scalars) == {"reward", "tas_mean", "kl_mean", "completion_length", "clip_fraction_low"}
    for key, got in scalars.items():
        assert [s for s, _ in got] == [1, 2]
        np.testing.assert_allclose([v for _, v in got], [r[key] for r in rows], rtol=1e-7, err_msg=key)

    # resumed from step 1: TensorBoard is told to drop the old events of steps >= 2 (purge step)
    again = MetricsWriter(str(tmp_path), "metrics", tensorboard="grpo", enabled=True)
    assert [r["step"] for r in again.resume(1)] == [1]
    again.write({"step": 2, "reward": 9.0})
    again.close()
    assert [r["reward"] for r in rows_of(tmp_path / "metrics.jsonl")] == [0.5, 9.0]
    logdir = str(tmp_path / "tensorboard" / "grpo")
    assert any(e.step == 2 and e.session_log.status == event_pb2.SessionLog.START for e in events(logdir))
    assert read_events(logdir)["reward"][-1] == (2, 9.0)
    # the library reader applies the purge: one value per step, the resumed run's at step 2
    shown = read_scalars(logdir)
    assert shown["reward"] == [(1, 0.5), (2, 9.0)]
    assert shown["tas_mean"] == [(1, pytest.approx(rows[0]["tas_mean"]))]  # step 2's old value purged


def test_object_store_rows_are_buffered_until_a_flush(tmp_path):
    writer = MetricsWriter(str(tmp_path), "metrics", remote=True, enabled=True)
    writer.write({"step": 1, "loss": 1.0})
    writer.write({"step": 2, "loss": 0.5})
    assert not (tmp_path / "metrics.jsonl").exists()  # not rewritten at every step
    writer.flush()
    assert [r["step"] for r in rows_of(tmp_path / "metrics.jsonl")] == [1, 2]
    writer.write({"step": 3, "loss": 0.25})
    assert len(rows_of(tmp_path / "metrics.jsonl")) == 2
    writer.close()
    assert [r["step"] for r in rows_of(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    again = MetricsWriter(str(tmp_path), "metrics", remote=True, enabled=True)
    assert [r["step"] for r in again.resume(2)] == [1, 2]  # step 3 came after the checkpoint resumed from
    again.write({"step": 3, "loss": 0.3})
    again.close()
    assert [r["loss"] for r in rows_of(tmp_path / "metrics.jsonl")] == [1.0, 0.5, 0.3]


def counting_phase(workdir: str, steps: int, *, every: int = 100) -> tuple[Phase, dict]:
    """A phase whose state is a step counter plus the sum of the steps taken; its metadata holds a
    'data position' that restore must hand back."""
    position = {"next": 0}

    def restore(meta):
        position["next"] = meta["position"]

    phase = Phase(name="Count", steps=steps, checkpointer=Checkpointer(os.path.join(workdir, "count"), every=every),
                  writer=MetricsWriter(workdir, "count_metrics", enabled=True),
                  metadata=lambda: {"position": position["next"]}, restore=restore)
    return phase, position


def make_step(position: dict, on_step=None):
    def step_fn(state, step):
        assert position["next"] == step  # the data position continues where the checkpoint left it
        position["next"] += 1
        if on_step is not None:
            on_step(step)
        return {"total": state["total"] + step}, {"value": float(step) * 2}

    return step_fn


def test_resume_continues_from_the_forced_save(tmp_path, capsys):
    state = {"total": jnp.zeros((), jnp.int32)}
    phase, position = counting_phase(str(tmp_path), 5)
    first = run_loop(phase, state, make_step(position), stop_after=2)  # saved at 2 although every=100
    assert (first.start, int(first.state["total"]), len(first.rows)) == (0, 1, 2)

    phase, position = counting_phase(str(tmp_path), 5)
    second = run_loop(phase, state, make_step(position))
    assert "Count: resumed from step 2 of 5" in capsys.readouterr().out
    assert second.start == 2 and int(second.state["total"]) == 0 + 1 + 2 + 3 + 4
    assert [r["step"] for r in second.rows] == [1, 2, 3, 4, 5]
    assert [r["value"] for r in rows_of(tmp_path / "count_metrics.jsonl")] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(r["seconds"] >= 0 for r in second.rows)

    phase, position = counting_phase(str(tmp_path), 5)  # finished: nothing to do, the rows come back
    third = run_loop(phase, state, make_step(position))
    assert third.start == 5 and [r["step"] for r in third.rows] == [1, 2, 3, 4, 5]


def test_sigterm_saves_the_step_and_exits_143(tmp_path):
    state = {"total": jnp.zeros((), jnp.int32)}
    phase, position = counting_phase(str(tmp_path), 10)

    def preempt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as exit_:
        run_loop(phase, state, make_step(position, preempt))
    assert exit_.value.code == PREEMPTED_EXIT_CODE
    assert Checkpointer(os.path.join(tmp_path, "count"), every=100).latest_step() == 3
    assert [r["step"] for r in rows_of(tmp_path / "count_metrics.jsonl")] == [1, 2, 3]
