"""Data-parallel training in several processes equals one process.

A job of 2 processes on localhost (JAX: `jax.distributed` with a
coordinator on 127.0.0.1 and CPU collectives through gloo; TensorFlow:
`MultiWorkerMirroredStrategy` with 2 workers on localhost ports), set up
by `gv.backend.data_parallel` as `recipes/train.py --job-addresses` does,
trains 3 steps of a global batch of 256 with the plain and the
semivariogram loss, and with the semivariogram loss on stored features
streamed by `gv.training.fit_resumable` (`tests/multiprocess_training.py`).
It runs in two
launches: 2 steps, then a fresh job resumes from the checkpoint of step 2
and trains step 3. One process holding the same 2 devices (JAX
`DataParallel` over 2 virtual devices, TensorFlow `MirroredStrategy` over
2 logical CPUs) trains the 3 steps in one go, and also loads the job's
checkpoint without any distribution. `tests/distribution_test.py` shows
that such replicas train the single-device objective.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.testing import backend

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multiprocess_training.py")
# Every test here starts jobs of several processes: `make test-slow` (the
# default suite stays under its time budget).
METHODS = ("geoclip", "semivariogram", "stream")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def _start_job(out, *args, processes=2):
    """The worker on `processes` processes; returns the `Popen`s."""
    addresses = ",".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    os.makedirs(out, exist_ok=True)
    procs = []
    for i in range(processes):
        log = open(os.path.join(out, f"log-{i}.txt"), "a")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    WORKER,
                    str(out),
                    "--job-addresses",
                    addresses,
                    "--process-id",
                    str(i),
                    *args,
                ],
                env=_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _log(out, i):
    with open(os.path.join(out, f"log-{i}.txt")) as f:
        return f.read()


def _run_job(out, *args, timeout=600):
    procs = _start_job(out, *args)
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=timeout) == 0, _log(out, i)[-4000:]


def _run_reference(out, *args):
    proc = subprocess.run(
        [sys.executable, WORKER, str(out), "--devices", "2", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _result(out, method, process=0):
    with open(os.path.join(out, method, f"process-{process}.json")) as f:
        return json.load(f)


def _skip_unless_multi_process():
    if backend() not in ("jax", "tensorflow"):
        pytest.skip(
            "several processes train on JAX and TensorFlow (Keras has no "
            "PyTorch distribution yet)"
        )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    _skip_unless_multi_process()
    import geovario_keras as gv
    from geovario_keras.testing.synthetic_features import (
        write_synthetic_features,
    )

    root = tmp_path_factory.mktemp("multiprocess")
    job, reference = root / "job", root / "reference"
    # The "stream" method: 768 stored rows (3 global batches) read by
    # `fit_resumable`, as at scale; the data set is built before the job.
    features, data_dir = root / "features", root / "tfds"
    write_synthetic_features(features, 768, 16, shard_size=256)
    gv.data.geotagged_features(features, data_dir, verbose=False)
    args = ["--methods", ",".join(METHODS)]
    args += ["--stream", f"{features},{data_dir}"]
    _run_job(job, *args, "--steps", "2")
    _run_job(job, *args, "--steps", "3")  # a fresh job resumes after step 2
    _run_reference(reference, *args, "--load", str(job))
    return job, reference


def assert_same_training(got, want, steps=slice(None)):
    """Losses rtol 1e-5, weights atol 1e-5, the queue, the variogram
    statistics after each step, the negatives' counts and the fit."""
    np.testing.assert_allclose(got["loss"], want["loss"][steps], rtol=1e-5)
    for g, w in zip(got["weights"], want["weights"]):
        np.testing.assert_allclose(g, w, atol=1e-5)
    np.testing.assert_allclose(got["queue"], want["queue"], atol=1e-5)
    g = np.asarray(got["statistics"])
    w = np.asarray(want["statistics"])[steps]
    np.testing.assert_array_equal(g[:, 0], w[:, 0])  # pair counts
    np.testing.assert_allclose(g[:, 1:], w[:, 1:], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["negatives"], want["negatives"], rtol=1e-4)
    np.testing.assert_allclose(got["params"], want["params"], rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_as_one(runs, method):
    job, reference = runs
    want = _result(reference, method)
    assert want["processes"] == 1 and want["start"] == 0
    assert len(want["loss"]) == 3
    for process in (0, 1):
        got = _result(job, method, process)
        assert got["processes"] == 2 and got["process"] == process
        # The second launch resumed from the checkpoint of step 2 ...
        assert got["start"] == 2
        # ... and its step 3, and the state after it, are the reference's.
        assert_same_training(got, want, steps=slice(2, 3))
    if method != "geoclip":  # the fit is live (not the default)
        assert not np.allclose(want["params"], 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_each_process_feeds_its_own_share(runs, method):
    job, reference = runs
    batch = np.asarray(_result(reference, method)["share"])
    assert batch.shape == (256, 2)  # one process: the whole global batch
    for process in (0, 1):
        share = np.asarray(_result(job, method, process)["share"])
        # half of the first global batch, in order: rows 0-127 or 128-255
        np.testing.assert_array_equal(
            share, batch[128 * process : 128 * (process + 1)]
        )


@pytest.mark.parametrize("method", METHODS)
def test_a_job_checkpoint_loads_in_one_process(runs, method):
    job, reference = runs
    loaded = _result(reference, method)["loaded"]
    assert loaded["step"] == 3
    for g, w in zip(loaded["weights"], _result(job, method)["weights"]):
        np.testing.assert_array_equal(g, w)
    assert np.all(np.isfinite(loaded["evaluate"]))


def test_a_killed_worker_stops_the_job_and_it_resumes(tmp_path):
    """Process 1 is killed (SIGKILL) after its first step: process 0 stops
    with an error naming the lost process within the failure timeout (no
    hang); the job started again resumes from the last checkpoint and ends
    as an uninterrupted run."""
    _skip_unless_multi_process()
    job, reference = tmp_path / "job", tmp_path / "reference"
    timeout = 10
    procs = _start_job(
        job,
        "--methods",
        "semivariogram",
        "--pause",
        "3",
        "--failure-timeout",
        str(timeout),
    )
    deadline = time.monotonic() + 300
    checkpoints = job / "semivariogram" / "checkpoints"
    while not gv_checkpoints(checkpoints):  # killed after the first one
        running = time.monotonic() < deadline and procs[1].poll() is None
        assert running, _log(job, 1)[-4000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = procs[0].wait(timeout=timeout + 120)
    stopped = time.monotonic() - killed
    log = _log(job, 0)
    assert code != 0, log[-4000:]
    assert stopped < timeout + 60, stopped
    # The reason, in the engine's words (JAX) or the package's (TensorFlow)
    reason = "another task died"
    if backend() == "tensorflow":
        reason = "Start the job again"
    assert reason in log, log[-4000:]
    print(f"process 0 stopped {stopped:.1f} s after the kill:", log[-2000:])
    done = gv_checkpoints(checkpoints)
    assert done and done[-1] < 3  # stopped mid-run, after a checkpoint
    _run_job(job, "--methods", "semivariogram")
    _run_reference(reference, "--methods", "semivariogram")
    want = _result(reference, "semivariogram")
    for process in (0, 1):
        got = _result(job, "semivariogram", process)
        assert got["start"] == done[-1]
        assert_same_training(got, want, steps=slice(done[-1], 3))


def gv_checkpoints(directory):
    import geovario_keras as gv

    return [step for step, _ in gv.training.checkpoints(directory)]
