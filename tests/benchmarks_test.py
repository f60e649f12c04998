"""The benchmark report's arithmetic (benchmarks/run_all.py), on made-up runs.

The figures themselves are measured by `python benchmarks/run_all.py`
(BENCHMARKS.md); here only the ratios, the top-1 agreement and the goal
verdicts it derives from them are checked against hand-computed values.
"""

import os
import sys

import numpy as np

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
)

import run_all  # noqa: E402

_MEM = {"host_rss": 100.0, "device": None}


def _encoder(impl, backend, policy, points_per_s, query_s, points=1000):
    return {
        "benchmark": "encoder",
        "impl": impl,
        "name": impl,
        "backend": backend,
        "policy": policy,
        "points": points,
        "points_per_s": points_per_s,
        "gflops": points_per_s * 0.2,
        "encode_warmup_s": 1.0,
        "encode_memory_mib": _MEM,
        "query_s": query_s,
        "query_warmup_s": 0.1,
        "query_memory_mib": _MEM,
        "device": "cpu",
    }


def _train(impl, backend, loss, step_s):
    return {
        "benchmark": "train_step",
        "impl": impl,
        "name": impl,
        "backend": backend,
        "policy": "float32",
        "loss": loss,
        "jit": True,
        "step_s": step_s,
        "warmup_s": 1.0,
        "memory_mib": _MEM,
        "device": "cpu",
    }


def test_top1_agreement(tmp_path):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 4)).astype("float32")
    queries = rng.normal(size=(20, 4)).astype("float32")
    np.savez(tmp_path / "jax-float32.npz", gallery=gallery, queries=queries)
    # The same gallery, one query moved onto another gallery point.
    moved = queries.copy()
    best = np.argmax(queries @ gallery.T, axis=1)
    moved[0] = 100 * gallery[(best[0] + 1) % 50]
    np.savez(
        tmp_path / "jax-mixed_bfloat16.npz", gallery=gallery, queries=moved
    )
    share = run_all.top1_agreement(str(tmp_path), "jax", "mixed_bfloat16")
    assert share == 19 / 20
    assert run_all.top1_agreement(str(tmp_path), "tensorflow", "x") is None


def test_tables_ratios_and_goals(tmp_path):
    results = [
        {
            "benchmark": "matmul",
            "backend": "torch",
            "dtype": "float32",
            "rows": 4096,
            "gflops": 200.0,
            "device": "cpu",
        },
        _encoder("reference", "torch", "float32", 1000.0, 10.0),
        _encoder("keras", "jax", "float32", 960.0, 0.005),
        _encoder("keras", "jax", "mixed_bfloat16", 1500.0, 0.02, points=500),
        _train("reference", "torch", "geo", 2.0),
        _train("keras", "jax", "geo", 1.0),
        _train("keras", "jax", "semivariogram", 1.1),
    ]
    text = run_all.tables(results, str(tmp_path), failures=[])
    assert "| 0.96x |" in text  # 960 / 1000 points/s
    assert "| 192 | 0.96 |" in text  # 192 GFLOP/s of the 200 peak
    # Per query: 10 s / 5 ms; the cut gallery scales the reference to 5 s.
    assert "2,000x" in text and "250x" in text
    assert "+10.0 %" in text  # 1.1 s against 1.0 s
    assert "| 2.00x |" in text  # train step vs reference
    goals = text.split("### Goals")[1]
    assert (
        "fp32 encoder throughput vs reference (jax) | 0.95 | 0.96x | yes"
        in goals
    )
    assert "best backend (jax) | 2.0 | 1.50x | **no**" in goals
    assert "(jax float32) | 1000.0 | 2,000x | yes" in goals
    assert "(jax float32) | 0.05 | +10.0 % | **no**" in goals
