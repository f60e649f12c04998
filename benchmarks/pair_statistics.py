"""Formulations of the training step's semivariogram statistics, timed.

Each training step with the semivariogram loss bins its negative pairs by
distance and adds, per bin, their count, dissimilarity sum and sum of
squares (`gv.semivariogram.empirical.batch_statistics`, three
`segment_sum`s of a bin index made of one comparison per edge). This
times, jitted alone on JAX, the package's whole update
(`SemivariogramState._step_statistics`), its parts, and formulations
that avoid the scatter of `segment_sum`: one `segment_sum` of the three
values at once, cumulative sums over the edges (a comparison matrix,
reduced or multiplied) and a one-hot matrix product. Each formulation's
largest difference from numpy (`np.digitize`, `np.bincount` in float64)
on the same pairs is printed beside its time. The result is in
BENCHMARKS.md ("The semivariogram's share").

Run: `KERAS_BACKEND=jax python benchmarks/pair_statistics.py
[--batch 64] [--queue 256] [--repeats 7] [--calls 200]`.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")


def pairs(batch, queue, seed=0):
    """Candidate coordinates `(B + Q, 2)`, distances and dissimilarities
    `(B, B + Q)` of unit 16-d features, and a negatives mask."""
    import numpy as np

    from geovario_keras import geo

    rng = np.random.default_rng(seed)
    c = batch + queue
    gps = np.stack(
        [rng.uniform(-60, 60, c), rng.uniform(-180, 180, c)], 1
    ).astype("float32")
    f = rng.normal(size=(c, 16)).astype("float32")
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    h = np.asarray(geo.pairwise_haversine_km(gps[:batch], gps), "float32")
    d = (1.0 - f[:batch] @ f.T).astype("float32")
    negative = np.ones((batch, c), bool)
    negative[np.arange(batch), np.arange(batch)] = False
    return gps, h, d, negative


def formulations(edges):
    """name -> function(h, d, w) of `(count, sum, sum of squares)` per bin
    (float32 `(3, K)`), w the 0/1 weight of each pair."""
    import jax
    import jax.numpy as jnp

    from geovario_keras.semivariogram import empirical

    k = len(edges) - 1
    e = jnp.asarray(edges, "float32")

    def index(h):
        return empirical._bin_index(h, [float(x) for x in edges])

    def values(d, w):
        return jnp.stack([w, d * w, d * d * w])

    def package(h, d, w):
        # `batch_statistics` itself; its (count, mean, m2) as sums.
        n, mean, m2 = empirical.batch_statistics(h, d, edges, w > 0)
        return jnp.stack([n, n * mean, m2 + n * mean * mean])

    def one_segment_sum(h, d, w):
        s = jax.ops.segment_sum(values(d, w).T, index(h), k + 1)
        return s[:k].T

    def cumulative_matmul(h, d, w):
        at_or_above = (h[:, None] >= e[None, :]).astype("float32")
        s = values(d, w) @ at_or_above
        return s[:, :-1] - s[:, 1:]

    def cumulative_reduce(h, d, w):
        at_or_above = h[:, None] >= e[None, :]
        s = jnp.stack(
            [
                jnp.sum(jnp.where(at_or_above, v[:, None], 0.0), 0)
                for v in values(d, w)
            ]
        )
        return s[:, :-1] - s[:, 1:]

    def one_hot_matmul(h, d, w):
        hot = (index(h)[:, None] == jnp.arange(k)[None, :]).astype("float32")
        return values(d, w) @ hot

    return {
        "the package's `batch_statistics` (three segment sums)": package,
        "one segment sum of (P, 3)": one_segment_sum,
        "cumulative, comparison matmul": cumulative_matmul,
        "cumulative, comparison reduce": cumulative_reduce,
        "one-hot matmul": one_hot_matmul,
    }


def numpy_reference(h, d, w, edges):
    import numpy as np

    h, d, w = (np.asarray(a, "float64").reshape(-1) for a in (h, d, w))
    k = len(edges) - 1
    i = np.digitize(h, edges) - 1
    keep = (i >= 0) & (i < k) & (w > 0)
    return np.stack(
        [np.bincount(i[keep], v[keep], k) for v in (np.ones_like(d), d, d * d)]
    )


def best_ms(fn, args, repeats, calls):
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--queue", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    from geovario_keras.semivariogram import empirical
    from geovario_keras.semivariogram.state import SemivariogramState

    if keras.backend.backend() != "jax":
        raise SystemExit("KERAS_BACKEND=jax only (the formulations are JAX)")
    gps, h, d, negative = pairs(args.batch, args.queue)
    edges = empirical.default_bin_edges_km()
    flat = [jnp.asarray(a.reshape(-1)) for a in (h, d)]
    w = jnp.asarray(negative.reshape(-1), "float32")
    want = numpy_reference(h, d, negative, edges)
    print(
        f"{args.batch} x {args.batch + args.queue} pairs "
        f"({h.size:,}), {len(edges) - 1} bins, jax {jax.__version__}"
    )
    rows = []
    for name, fn in formulations(edges).items():
        fn = jax.jit(fn)
        got = np.asarray(fn(*flat, w), "float64")
        error = np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))
        ms = best_ms(fn, (*flat, w), args.repeats, args.calls)
        rows.append((name, ms, f"{error:.1e}"))
    state = SemivariogramState()
    update = jax.jit(state._step_statistics)
    masks = np.random.default_rng(1).random((2,) + h.shape) < 0.1
    step_args = [jnp.asarray(a) for a in (gps, h, d, negative, *masks)]
    rows.append(
        (
            "the whole update (SemivariogramState._step_statistics)",
            best_ms(update, step_args, args.repeats, args.calls),
            "",
        )
    )
    bins = jax.jit(lambda h: empirical._bin_index(h, [float(x) for x in edges]))
    rows.append(
        (
            "its bin index alone",
            best_ms(bins, flat[:1], args.repeats, args.calls),
            "",
        )
    )
    print(
        "| formulation | ms a call | largest error against numpy "
        "(relative; absolute below 1) |\n|---|---|---|"
    )
    for name, ms, error in rows:
        print(f"| {name} | {ms:.4f} | {error} |")


if __name__ == "__main__":
    main()
