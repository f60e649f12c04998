"""Benchmark scripts' own arithmetic, on made-up inputs.

The figures themselves are measured by `python benchmarks/run_all.py`
(BENCHMARKS.md); here only the ratios, the top-1 agreement and the goal
verdicts it derives from them are checked against hand-computed values,
and the plain-PyTorch reference of `studies/torch_reference.py` against
the package (two codes of one specification).
"""

import os
import sys

import keras
import numpy as np
import pytest

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "benchmarks"
)
sys.path.insert(0, BENCHMARKS)
sys.path.insert(0, os.path.join(BENCHMARKS, "studies"))

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


def test_independent_semivariogram_weights_equal_the_loss():
    # benchmarks/studies/torch_reference.py writes the semivariogram
    # weighting again in plain torch, to compare training with
    # geovario-keras. Both must be the same specification: same fit, same
    # pairs -> same adjusted logits.
    torch = pytest.importorskip("torch")
    import torch_reference

    import geovario_keras as gv

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype("float32")
    h = rng.uniform(0, 8000, size=(6, 10)).astype("float32")
    h[np.arange(6), np.arange(6)] = 0.0
    d = rng.uniform(0, 1.2, size=(6, 10)).astype("float32")
    nugget, psill, length, alpha = 0.1, 0.8, 400.0, 0.7
    rho = length * np.log(20.0) ** (1 / alpha)
    fit = gv.semivariogram.VariogramFit(
        family="stable",
        nugget=nugget,
        psill=psill,
        length_scale=length,
        alpha=alpha,
        sill=nugget + psill,
        effective_range_km=rho,
        converged=True,
    )
    loss = gv.losses.SemivariogramContrastiveLoss()
    y_pred = {
        "logits": logits,
        "distance_km": h,
        "dissimilarity": d,
        "variogram": fit.packed(),
    }
    want = keras.ops.convert_to_numpy(
        loss.adjust_negative_logits(keras.ops.convert_to_tensor(logits), y_pred)
    )
    sv = torch_reference.SemivariogramTorch(queue=4, dim=8)
    sv.fit = (nugget, psill, length, alpha, rho)
    negative = torch.ones(6, 10, dtype=torch.bool)
    negative[torch.arange(6), torch.arange(6)] = False
    got = sv.adjust(
        torch.from_numpy(logits),
        torch.from_numpy(h),
        torch.from_numpy(d),
        negative,
    ).numpy()
    off = negative.numpy()  # the loss leaves positives to its caller
    np.testing.assert_allclose(got[off], want[off], rtol=1e-5, atol=1e-5)
    assert (got != logits).sum() > 10  # both kinds of weight were applied


def test_independent_variogram_fit_agrees_with_scipy_closed_form():
    # Bins sampled from a stable variogram: the plain fit recovers its range.
    pytest.importorskip("torch")
    import torch_reference

    import geovario_keras as gv

    sv = torch_reference.SemivariogramTorch(queue=4, dim=8)
    centers = 0.5 * (sv.edges[:-1] + sv.edges[1:])
    gamma = 0.05 + 0.9 * (1 - np.exp(-((centers / 600.0) ** 1.3)))
    sv.sums[:] = gamma * 100
    sv.counts[:] = 100
    nugget, psill, length, alpha, rho, r2, trusted = sv.refit()
    np.testing.assert_allclose(
        [nugget, psill, length, alpha], [0.05, 0.9, 600.0, 1.3], rtol=1e-3
    )
    np.testing.assert_allclose(rho, 600.0 * np.log(20) ** (1 / 1.3), rtol=1e-3)
    assert trusted and r2 > 0.999 and sv.fit is not None
    # Bins without spatial structure are fitted but not trusted, as the
    # package's fit falls back on the same bins: the loss stays plain.
    flat = 0.5 + 0.01 * np.sin(np.arange(len(centers)))
    sv.sums[:] = flat * 100
    sv.counts[:] = 100
    *_, trusted = sv.refit()
    assert not trusted and sv.fit is None
    with pytest.warns(RuntimeWarning, match="fell back"):
        fit = gv.semivariogram.fit_variogram(
            centers, flat, np.full(len(centers), 100.0), min_count=10
        )
    assert not fit.converged


def test_torch_keras_style_adam_equals_keras_adam():
    # studies/independent.py --torch-adam keras: three steps of the torch
    # optimizer and of keras.optimizers.Adam(epsilon=1e-7) on the same
    # parameters and gradients (tiny ones too, where the epsilon's
    # placement matters).
    torch = pytest.importorskip("torch")
    import torch_reference

    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 5)).astype("float32")
    grads = [
        (rng.normal(size=(4, 5)) * 10.0 ** rng.integers(-9, 0, (4, 5))).astype(
            "float32"
        )
        for _ in range(3)
    ]
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = torch_reference.keras_style_adam([p], 1e-3, 1e-7)
    var = keras.Variable(start.copy())
    ref = keras.optimizers.Adam(1e-3, epsilon=1e-7)
    ref.build([var])
    for g in grads:
        p.grad = torch.from_numpy(g)
        opt.step()
        ref.apply([keras.ops.convert_to_tensor(g)], [var])
    np.testing.assert_allclose(
        p.detach().numpy(),
        keras.ops.convert_to_numpy(var),
        rtol=1e-6,
        atol=1e-7,
    )
    # torch's own Adam differs where gradients are tiny: the test can fail.
    q = torch.nn.Parameter(torch.from_numpy(start.copy()))
    plain = torch.optim.Adam([q], 1e-3, eps=1e-7)
    for g in grads:
        q.grad = torch.from_numpy(g)
        plain.step()
    assert np.abs(q.detach().numpy() - p.detach().numpy()).max() > 1e-5


def test_pair_statistics_formulations_equal_numpy():
    # benchmarks/pair_statistics.py times these; each must compute what the
    # package's statistics compute (numpy's digitize and bincount here).
    if keras.backend.backend() != "jax":
        pytest.skip("the study's formulations are written in JAX")
    import jax.numpy as jnp
    import pair_statistics

    from geovario_keras.semivariogram import empirical

    gps, h, d, negative = pair_statistics.pairs(8, 24)
    negative[0, 5:9] = False  # a few more pairs left out
    edges = empirical.default_bin_edges_km()
    want = pair_statistics.numpy_reference(h, d, negative, edges)
    assert want[0].sum() == negative.sum()
    args = (
        jnp.asarray(h.reshape(-1)),
        jnp.asarray(d.reshape(-1)),
        jnp.asarray(negative.reshape(-1), "float32"),
    )
    for name, fn in pair_statistics.formulations(edges).items():
        got = np.asarray(fn(*args), "float64")
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-4, err_msg=name
        )
