"""Shared test helpers."""

import os
import subprocess
import warnings

# The tests run on the CPU (simulated devices where they need several). libtpu, installed for the
# ahead-of-time TPU compile tests, is only ever used through `get_topology_desc`; several test
# processes may load it at once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# XLA's persistent compilation cache, shared by every test process (the xdist workers and the
# subprocesses they start, which inherit the environment): many tests build the same tiny programs
# (a run, then its resume; the same run config from several tests), and on two cores compiling them
# again is most of the suite's time. Entries are keyed by the program, its options and the backend,
# so a hit is the same executable; set JAX_COMPILATION_CACHE_DIR="" to compile everything afresh.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".cache", "xla_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA's CPU backend at optimisation level 0, without LLVM's expensive passes: the tests' programs
# are small and run a few times, so compiling is much of their cost: the whole suite takes ~16% less
# CPU time (a third less for the training and GRPO tests, a quarter for the TPU plan of a GRPO run).
# The whole suite passes either way (the same values to every test's tolerance), and the TPU plan of
# a GRPO run has the same bytes, FLOPs and Mosaic calls in each of its nine programs at both levels.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 tests the optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def simulated_devices_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess that simulates `devices` CPU devices running collectives.

    XLA's CPU runtime runs each device's part of a program on a pool with one thread per device,
    and an in-process all-reduce holds its thread until every participant arrives. Anything else
    holding a pool thread (another multi-device program dispatched before this one finished, a
    multi-threaded Eigen op waiting for sub-tasks) can leave participants without a thread, and
    XLA aborts the process (seen on CI: "Expected 4 threads to join the rendezvous, but only 3 of
    them arrived on time"). The scripts therefore wait for each multi-device program, and:
    - `--xla_cpu_multi_thread_eigen=false`: single-threaded Eigen in the device programs (no
      sub-tasks; on a 2-core machine it costs nothing);
    - the collective patience is 150 s (XLA's 40 s default is exceeded on a loaded 2-core
      machine; a wedged run is then aborted and rerun once by `run_simulated`).
    """
    return (f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false "
            "--xla_cpu_collective_call_terminate_timeout_seconds=150")


def run_simulated(args: list[str], devices: int, before_retry=None, **kwargs) -> subprocess.CompletedProcess:
    """Run `args` in a subprocess with `devices` simulated CPU devices (one device: no flags).

    XLA's in-process CPU collectives can still wedge on an oversubscribed host (a runtime fault,
    not a wrong result); a run that XLA aborted that way is run once more, after `before_retry()`,
    with a warning. Any other failure, and a second abort, is returned as it is.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = simulated_devices_flags(devices)
    result = subprocess.run(args, env=env, capture_output=True, text=True, **kwargs)
    aborted = "Exiting to ensure a consistent program state" in result.stderr
    if result.returncode != 0 and devices > 1 and aborted:
        warnings.warn(f"XLA CPU collectives wedged and aborted; running {args[1:]} once more", stacklevel=2)
        if before_retry is not None:
            before_retry()
        result = subprocess.run(args, env=env, capture_output=True, text=True, **kwargs)
    return result


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
HF_TINY = os.path.join(FIXTURES, "hf_tiny_qwen2_5_vl")


@pytest.fixture(scope="session")
def hf_tiny_dir() -> str:
    return HF_TINY


@pytest.fixture(scope="session")
def hf_tiny_io() -> dict[str, np.ndarray]:
    with np.load(os.path.join(HF_TINY, "io.npz")) as data:
        return dict(data)
