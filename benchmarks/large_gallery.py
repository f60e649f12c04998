"""Galleries of millions: memory and speed of `set_gallery` and the search.

For each gallery size, in its own process (so peak memory is that size's
alone): `GeoCLIP.set_gallery` encodes N random coordinates (streamed, in
batches of 4,096) with a small location encoder of output size `--dim`
(the gallery's storage does not depend on the encoder; a full-size encoder
would spend hours of 2-core CPU on 10 M points), then `predict_gps`'s
search (`GPSGallery.search`, chunks of 2**20 points, blocks of queries
holding ~64 MB of logits) answers one query and a batch of 256. The same
top-5 is computed by plain numpy (float32 matmul per chunk +
`argpartition`) on the same embeddings, side by side, and the two must
agree.

Memory: the host resident-set high-water mark above the process's level
before each phase, against the gallery's own size (N x (dim + 2) float32).

    python benchmarks/large_gallery.py                    # 1 M and 10 M
    python benchmarks/large_gallery.py --points 1000000 --dim 512
"""

import argparse
import os
import time

import harness

GIB = 2**30


def measure(points, dim, queries, repeats):
    import keras
    import numpy as np

    import geovario_keras as gv

    rng = np.random.default_rng(0)
    model = gv.GeoCLIP(
        gv.layers.ImageEncoder(None, embed_dim=dim, hidden_units=dim),
        gv.layers.LocationEncoder(
            num_features=64,
            hidden_units=128,
            hidden_layers=1,
            embed_dim=dim,
            seed=0,
        ),
        queue_size=0,
    )
    model.build((None, 16))
    gps = np.stack(
        [rng.uniform(-90, 90, points), rng.uniform(-180, 180, points)], 1
    ).astype("float32")
    stored_mib = points * (dim + 2) * 4 / 2**20
    result = {
        "backend": keras.backend.backend(),
        "points": points,
        "dim": dim,
        "gallery_mib": round(stored_mib),
    }

    harness.reset_peak_memory()
    before = harness.current_rss_mib()
    start = time.perf_counter()
    model.set_gallery(gps, verbose=0)
    result["set_gallery_s"] = round(time.perf_counter() - start, 1)
    result["set_gallery_peak_mib"] = round(
        harness.peak_memory_mib()["host_rss"] - before
    )
    del gps

    x = rng.normal(size=(queries, 16)).astype("float32")
    img = model.encode_image(x, batch_size=queries)
    scale = float(keras.ops.convert_to_numpy(model.temperature()))

    last = {}

    def search(q):
        last["ours"] = model.gallery.search(q, scale, top_k=5)  # default
        return last["ours"]

    harness.reset_peak_memory()
    before = harness.current_rss_mib()
    one, _ = harness.timed(lambda: search(img[:1]), repeats)
    batch, _ = harness.timed(lambda: search(img), repeats)
    result["search_peak_mib"] = round(
        harness.peak_memory_mib()["host_rss"] - before
    )
    result["one_query_ms"] = round(one * 1e3, 1)
    result["queries_per_s"] = round(queries / batch)

    # Plain numpy on the same embeddings: the same chunks, float32 BLAS.
    keys = keras.ops.convert_to_numpy(model.gallery.embeddings)
    chunk = 1 << 20

    def numpy_search(q):
        best_v = best_i = None
        for s in range(0, len(keys), chunk):
            logits = scale * (q @ keys[s : s + chunk].T)
            i = np.argpartition(-logits, 5, axis=1)[:, :5]
            v = np.take_along_axis(logits, i, 1)
            if best_v is not None:
                v = np.concatenate([best_v, v], 1)
                i = np.concatenate([best_i, i + s], 1)
            else:
                i = i + s
            keep = np.argsort(-v, 1)[:, :5]
            best_v = np.take_along_axis(v, keep, 1)
            best_i = np.take_along_axis(i, keep, 1)
        last["numpy"] = best_v, best_i
        return best_v, best_i

    one_np, _ = harness.timed(lambda: numpy_search(img[:1]), repeats)
    batch_np, _ = harness.timed(lambda: numpy_search(img), repeats)
    result["numpy_one_query_ms"] = round(one_np * 1e3, 1)
    result["numpy_queries_per_s"] = round(queries / batch_np)
    index, want = last["ours"][1], last["numpy"][1]  # the batch's top-5
    result["top5_agreement_with_numpy"] = float(
        np.mean(np.sort(index, 1) == np.sort(want, 1))
    )
    return result


def table(rows):
    lines = [
        "| backend | points | dim | gallery | set_gallery | its peak | "
        "search peak | 1 query | queries/s (batch of 256) | numpy: 1 query, "
        "queries/s | top-5 = numpy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['points']:,} | {r['dim']} | "
            f"{r['gallery_mib'] / 1024:.2f} GiB | {r['set_gallery_s']} s | "
            f"+{r['set_gallery_peak_mib'] / 1024:.2f} GiB | "
            f"+{r['search_peak_mib'] / 1024:.2f} GiB | "
            f"{r['one_query_ms']} ms | {r['queries_per_s']:,} | "
            f"{r['numpy_one_query_ms']} ms, {r['numpy_queries_per_s']:,} | "
            f"{r['top5_agreement_with_numpy']:.4f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, nargs="*")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--backends", nargs="*", default=None)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    harness.add_standard_args(parser)
    args = parser.parse_args()
    if args.single:  # one size, this process
        result = measure(args.points[0], args.dim, args.queries, args.repeats)
        harness.emit(result, args.json)
        return
    backends = args.backends or [os.environ.get("KERAS_BACKEND", "jax")]
    rows = []
    print(harness.machine())
    for backend in backends:
        for points in args.points or (1_000_000, 10_000_000):
            argv = ["--single", "--points", str(points)]
            argv += ["--dim", str(args.dim), "--queries", str(args.queries)]
            argv += ["--repeats", str(args.repeats)]
            row = harness.run_child(__file__, argv, backend, args.json)
            if row is not None:
                rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
