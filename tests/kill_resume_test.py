"""SIGKILL at random moments, then resume: nothing lost, nothing twice.

Each job (`tests/streaming_job.py`) runs in its own process; it is killed
three times at random moments of its work and then run to the end. The
result must equal that of an uninterrupted run: the same rows in the same
shards for the features extraction; the same weights, and the same losses
from the last checkpoint on, for training; the same predictions and
report, the finished blocks not predicted again, for an evaluation. Slow
(`make test-slow`).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import geovario_keras as gv
from geovario_keras.data import features as features_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "streaming_job.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)


def _run(*args):
    proc = subprocess.run(
        [sys.executable, JOB, *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _wait_for_work(proc):
    for line in proc.stdout:  # tfds prints its build first
        if line.strip() == "working":
            return
    raise AssertionError(f"the job ended before working: {proc.wait()}")


def _start(args):
    """The job in its own process, once its work (not imports) began."""
    proc = subprocess.Popen(
        [sys.executable, JOB, *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _wait_for_work(proc)
    return proc


def _timed_work(*args):
    """Seconds from "working" to "done" of an uninterrupted run (the
    process's exit, which the kills below are not meant to reach, not
    included: it took as long as the extraction's work)."""
    proc = _start(args)
    start = time.time()
    for line in proc.stdout:
        if line.strip() == "done":
            seconds = time.time() - start
            break
    else:
        raise AssertionError(f"the job ended before its work: {proc.wait()}")
    assert proc.wait(timeout=900) == 0
    return seconds


def _kill_during_work(args, delay, chunks=0):
    """SIGKILL `delay` s after the job's work began (training: after it
    printed `chunks` more checkpoint intervals)."""
    proc = _start(args)
    for _ in range(chunks):
        proc.stdout.readline()
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _rows(folder, split):
    out = {}
    for path, rows in features_lib.shard_paths(folder, split):
        shard = features_lib.read_shard(path, rows)
        shard.pop("skipped")
        for key, value in shard.items():
            out.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return gv.data.write_blue_marble_corpus(
        root / "c", num_train=1200, num_test=100, image_size=32
    )


@pytest.mark.slow
def test_extraction_killed_three_times_ends_with_the_same_rows(
    corpus, tmp_path
):
    whole = tmp_path / "whole"
    work = _timed_work("extract", corpus, whole)
    rng = np.random.default_rng(0)
    cut = tmp_path / "cut"
    for delay in rng.uniform(0.05, 0.3, 3) * work:
        _kill_during_work(("extract", corpus, cut), delay)
    assert not features_lib.read_manifest(cut).get("complete")
    _run("extract", corpus, cut)
    for split in ("train", "test"):
        want, got = _rows(whole, split), _rows(cut, split)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert not [p for p in os.listdir(cut) if ".tmp" in p]


@pytest.mark.slow
def test_training_killed_three_times_ends_as_an_uninterrupted_run(
    corpus, tmp_path
):
    features = tmp_path / "features"
    _run("extract", corpus, features)
    data_dir = tmp_path / "tfds"
    whole = tmp_path / "whole.npz"
    work = _timed_work("train", features, data_dir, tmp_path / "a", whole)
    rng = np.random.default_rng(1)
    per_chunk = work / 18  # 6 epochs x 3 checkpoint intervals
    for chunks, delay in zip(rng.integers(1, 4, 3), rng.uniform(0, 1, 3)):
        _kill_during_work(
            ("train", features, data_dir, tmp_path / "b", tmp_path / "x.npz"),
            delay * per_chunk,
            chunks,
        )
    cut = tmp_path / "cut.npz"
    _run("train", features, data_dir, tmp_path / "b", cut)
    want, got = np.load(whole), np.load(cut)
    losses = got["losses"]
    assert 0 < len(losses) < len(want["losses"])  # it was interrupted
    np.testing.assert_allclose(
        losses, want["losses"][-len(losses) :], atol=1e-4
    )
    for key in want.files:
        if key != "losses":
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)


@pytest.mark.slow
def test_evaluation_killed_three_times_ends_as_an_uninterrupted_run(
    corpus, tmp_path
):
    features = tmp_path / "features"
    _run("extract", corpus, features)
    data_dir = tmp_path / "tfds"
    whole = tmp_path / "whole.npz"
    work = _timed_work("evaluate", features, data_dir, tmp_path / "a", whole)
    blocks = int(np.load(whole)["predicted"])
    assert blocks == 25  # 100 test rows, 4 a block
    rng = np.random.default_rng(2)
    per_block = work / blocks
    for done, delay in zip(rng.integers(1, 6, 3), rng.uniform(0, 1, 3)):
        _kill_during_work(
            ("evaluate", features, data_dir, tmp_path / "b", tmp_path / "x"),
            delay * per_block,
            done,
        )
    cut = tmp_path / "cut.npz"
    _run("evaluate", features, data_dir, tmp_path / "b", cut)
    want, got = np.load(whole), np.load(cut)
    assert 0 < int(got["predicted"]) < blocks  # it was interrupted
    np.testing.assert_array_equal(got["pred"], want["pred"])
    np.testing.assert_array_equal(got["keys"], want["keys"])
    np.testing.assert_array_equal(got["values"], want["values"])
    assert not os.path.exists(tmp_path / "b")  # removed at the end
