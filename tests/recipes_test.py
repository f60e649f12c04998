"""The recipes run end to end (small data, one epoch): slow tests."""

import os
import subprocess
import sys

import pytest

from tests.testing import backend
from tests.testing import slow_on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, **env_vars):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_vars)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_compare_train_evaluate(tmp_path):
    data = str(tmp_path / "tfds")
    out = _run(
        [
            os.path.join(ROOT, "recipes", "compare.py"),
            "--seeds",
            "0",
            "1",
            "--epochs",
            "1",
            "--methods",
            "geoclip",
            "semivariogram",
            "robinson",
            "--num-places",
            "600",
            "--data-dir",
            data,
            "--out",
            "cmp",
            "--export",
            "sm",
            "--blocks-seeds",
        ],
        tmp_path,
    )
    assert "| GeoCLIP (plain InfoNCE) | 2 |" in out
    assert "1-NN raw pixels" in out
    assert "hybrid prediction" in out
    for name in ("results.md", "results.png", "variogram.png", "error_map.png"):
        assert (tmp_path / "cmp" / name).is_file()
    assert (tmp_path / "sm" / "1" / "saved_model.pb").is_file()
    # train.py and evaluate.py use the default data set (12,000 places).
    out = _run(
        [
            os.path.join(ROOT, "recipes", "train.py"),
            "--epochs",
            "1",
            "--data-dir",
            data,
            "--out",
            "train",
            "--jit-compile",
            "off",
        ],
        tmp_path,
    )
    assert "(jit_compile=False)" in out
    model = tmp_path / "train" / "geoclip_semivariogram.keras"
    assert model.is_file() and (tmp_path / "train" / "error_map.png").is_file()
    out = _run(
        [
            os.path.join(ROOT, "recipes", "evaluate.py"),
            str(model),
            "--data-dir",
            data,
        ],
        tmp_path,
    )
    assert "acc_country" in out and "top-5 oracle" in out


@pytest.mark.slow
def test_train_data_parallel(tmp_path):
    # JAX on 2 virtual CPU devices (keras.distribution); TensorFlow's
    # MirroredStrategy over this machine's one CPU replica; PyTorch exits
    # with the reason.
    import keras

    args = [
        os.path.join(ROOT, "recipes", "train.py"),
        "--epochs",
        "1",
        "--data-parallel",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--out",
        "train",
    ]
    if keras.backend.backend() == "torch":
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0
        assert "need KERAS_BACKEND=jax or tensorflow" in proc.stderr
        return
    flags = "--xla_force_host_platform_device_count=2"
    out = _run(args, tmp_path, XLA_FLAGS=flags)
    assert "data parallel:" in out
    if keras.backend.backend() == "jax":
        assert "over 2 devices" in out
    assert (tmp_path / "train" / "geoclip_semivariogram.keras").is_file()


@pytest.mark.slow
def test_train_in_a_job_of_two_processes(tmp_path):
    # README, "More than one device": the launch commands of a job of two
    # processes, run on localhost (JAX: jax.distributed with gloo on CPU;
    # TensorFlow: MultiWorkerMirroredStrategy). PyTorch exits with the
    # reason. The data set is built first (every process reads it).
    import keras

    from tests.multiprocess_test import _free_ports

    data = str(tmp_path / "tfds")
    build = "import experiment; experiment.load_blue_marble(False, %r)" % data
    subprocess.run(
        [sys.executable, "-c", build],
        cwd=os.path.join(ROOT, "recipes"),
        check=True,
        capture_output=True,
    )
    addresses = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "recipes", "train.py"),
                "--epochs",
                "1",
                "--data-dir",
                data,
                "--out",
                "train",
                "--job-addresses",
                addresses,
                "--process-id",
                str(i),
            ],
            cwd=tmp_path,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    if keras.backend.backend() == "torch":
        assert all(p.returncode != 0 for p in procs)
        assert "need KERAS_BACKEND=jax or tensorflow" in outs[0]
        return
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
        assert "in 2 process(es)" in out
        assert "acc_country" in out  # each process evaluates a local copy
    assert "wrote" in outs[0] and "wrote" not in outs[1]  # process 0 writes
    model = tmp_path / "train" / "geoclip_semivariogram.keras"
    assert model.is_file() and (tmp_path / "train" / "error_map.png").is_file()


@slow_on("tensorflow", "torch")
def test_finetune_on_a_photo_corpus(tmp_path, geoclip_wheel):
    """recipes/finetune.py end to end (default suite on JAX, so CI runs
    it; on TensorFlow and PyTorch in `make test-slow`, as the pieces it
    joins are each tested on every backend in the default suite): a
    corpus of real images written as JPEG + CSV, a random CLIP checkpoint
    in the Hugging Face layout (projecting to 768 like ViT-L/14), the
    released GeoCLIP weights, a partly frozen backbone, evaluation, saving
    and export. The numbers mean nothing with a random backbone; the path
    is what is tested."""
    pytest.importorskip("transformers")
    from geovario_keras.testing import tiny_clip

    tiny_clip.write_tiny_clip(str(tmp_path / "clip"), projection_dim=768)
    args = [
        os.path.join(ROOT, "recipes", "finetune.py"),
        "--corpus",
        "corpus",
        "--make-corpus",
        "64",
        "16",
        "--clip",
        "clip",
        "--wheel",
        geoclip_wheel,
        "--epochs",
        "1",
        "--unfreeze",
        "1",
        "--queue-size",
        "64",
        "--data-dir",
        "tfds",
        "--out",
        "ft",
        "--export",
        "sm",
    ]
    out = _run(args, tmp_path)
    assert "corpus: 64 train / 16 test images" in out
    assert "backbone blocks trained: 1" in out
    for row in ("released GeoCLIP", "fine-tuned", "fine-tuned, hybrid"):
        assert f"| {row} | 1 |" in out
    assert (tmp_path / "ft" / "finetuned.keras").is_file()
    assert (tmp_path / "ft" / "preset" / "config.json").is_file()
    assert (tmp_path / "sm" / "1" / "saved_model.pb").is_file()
    # A second run refuses to replace the corpus and the saved model.
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "overwrite=True" in proc.stderr


@slow_on("tensorflow", "torch")
def test_paper_recipe_end_to_end_skips_finished_steps(tmp_path):
    """recipes/paper.py on a photo corpus with a random CLIP: features
    once, both methods trained streamed with checkpoints, every mode
    evaluated, exported; a second run finds every step done and changes
    nothing (default suite on JAX; PyTorch compiles the step)."""
    pytest.importorskip("transformers")
    import json

    import geovario_keras as gv
    from geovario_keras.testing import tiny_clip

    tiny_clip.write_tiny_clip(str(tmp_path / "clip"))
    gv.data.write_blue_marble_corpus(
        tmp_path / "corpus", num_train=256, num_test=48, image_size=40
    )
    args = [
        os.path.join(ROOT, "recipes", "paper.py"),
        "all",
        "--run",
        "run",
        "--corpus",
        "corpus",
        "--clip",
        "clip",
        "--shard-size",
        "100",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--queue-size",
        "64",
        "--embed-dim",
        "16",
        "--location-hidden",
        "32",
        "--location-layers",
        "1",
        "--location-features",
        "16",
        "--checkpoints-per-epoch",
        "2",
        "--shuffle-buffer",
        "100",
        "--gallery-size",
        "200",
    ]
    if backend() == "torch":  # the switch README gives PyTorch users
        args += ["--jit-compile", "on"]
    out = _run(args, tmp_path)
    run = tmp_path / "run"
    table = (run / "results.md").read_text()
    assert table.count("| geoclip |") == 3
    assert table.count("| semivariogram |") == 3
    manifest = json.loads((run / "features" / "manifest.json").read_text())
    assert manifest["complete"]
    assert manifest["splits"]["train"]["kept"] == 256
    for method in ("geoclip", "semivariogram"):
        assert (run / method / "model.keras").is_file()
        assert (run / method / "saved_model" / "1").is_dir()
        # The evaluations' kept blocks are removed with their reports done.
        assert not list((run / method).glob("evaluation-*"))
        folder = run / method / "checkpoints"
        assert len(gv.training.checkpoints(folder)) == 2  # the 2 newest
        run_file = json.loads((folder / "run.json").read_text())
        assert run_file["batch_size"] == 32 and run_file["seed"] == 0
    first = (run / "semivariogram" / "results-hybrid.json").read_text()
    out = _run(args, tmp_path)
    assert "training of geoclip is done" in out
    assert "features train" not in out  # nothing extracted again
    assert (run / "semivariogram" / "results-hybrid.json").read_text() == first
    assert (run / "results.md").read_text() == table
