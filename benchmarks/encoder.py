"""Location-encoder throughput and per-query prediction latency vs GeoCLIP.

Side by side in one process and one run, with the same released weights:
the reference PyTorch encoder (the geoclip 1.3.0 wheel's own code, run by
`tests/reference_geoclip.py`) and ours on the current Keras backend
(`KERAS_BACKEND`), compiled (`predict` with `jit_compile`). Every figure is
the median of `--repeats` timed runs after one warm-up; the warm-up (which
includes compilation) is reported separately. A float32 matmul of the
encoder's shape gives the machine's peak for the GFLOP/s column.

GeoCLIP's encoder costs 18.9 MFLOP per point: per branch 2 * (512 * 1024 +
2 * 1024 * 1024 + 1024 * 512) multiply-adds, times 3 branches.

Run: `KERAS_BACKEND=jax python benchmarks/encoder.py [--points 100000]`
(needs the geoclip wheel; `make install` downloads it).
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import geovario_keras as gv  # noqa: E402
from tests.reference_geoclip import reference_location_encoder  # noqa: E402

FLOP_PER_POINT = 3 * 2 * (512 * 1024 + 2 * 1024 * 1024 + 1024 * 512)


def timed(fn, repeats):
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), warmup


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--wheel",
        default=os.environ.get(
            "GEOVARIO_GEOCLIP_WHEEL",
            os.path.join(
                ROOT, ".cache", "geoclip", "geoclip-1.3.0-py3-none-any.whl"
            ),
        ),
    )
    args = parser.parse_args()
    backend = keras.backend.backend()
    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)[: args.points]
    n = len(gallery)
    rows = []

    # Machine peak: a float32 matmul of the encoder's hidden-layer shape.
    a = torch.randn(args.batch, 1024)
    b = torch.randn(1024, 1024)
    peak_s, _ = timed(lambda: [a @ b for _ in range(10)], args.repeats)
    peak = 10 * 2 * args.batch * 1024 * 1024 / peak_s / 1e9

    # Reference: PyTorch GeoCLIP encoder, same chunking.
    ref = reference_location_encoder(args.wheel)
    x = torch.from_numpy(gallery)

    def reference_encode():
        with torch.no_grad():
            return [ref(x[i : i + args.batch]) for i in range(0, n, args.batch)]

    ref_s, ref_warm = timed(reference_encode, args.repeats)
    rows.append(("reference PyTorch (eager)", ref_s, ref_warm))

    # Ours, compiled, same weights.
    model = gv.pretrained.geoclip_model(args.wheel, gallery=False, queue_size=0)
    ours_s, ours_warm = timed(
        lambda: model.encode_location(gallery, batch_size=args.batch),
        args.repeats,
    )
    rows.append((f"geovario-keras, {backend} (compiled)", ours_s, ours_warm))

    print(
        f"\nLocation encoder over {n} GeoCLIP gallery points, batch "
        f"{args.batch}; median of {args.repeats} (warm-up apart); "
        f"float32 matmul peak measured now: {peak:.0f} GFLOP/s"
    )
    print(
        "| encoder | points/s | GFLOP/s | of peak | vs reference | warm-up s |"
    )
    print("|---|---|---|---|---|---|")
    for name, seconds, warm in rows:
        gflops = n * FLOP_PER_POINT / seconds / 1e9
        print(
            f"| {name} | {n / seconds:,.0f} | {gflops:.0f} | "
            f"{gflops / peak:.2f} | {ref_s / seconds:.2f}x | {warm:.1f} |"
        )

    # Per-query prediction: our cached gallery vs re-encoding it per call
    # (what the reference `predict` does).
    model.set_gallery(gallery, batch_size=args.batch, verbose=0)
    query = np.random.default_rng(0).normal(size=(1, 768)).astype("float32")
    cached_s, cached_warm = timed(
        lambda: model.predict_gps(query, top_k=5), max(args.repeats, 10)
    )
    print(
        f"\nOne query, top-5 over {n} points: cached gallery "
        f"{cached_s * 1e3:.1f} ms (warm-up {cached_warm:.1f} s) vs "
        f"re-encoding the gallery like the reference {ref_s * 1e3:.0f} ms: "
        f"{ref_s / cached_s:,.0f}x"
    )


if __name__ == "__main__":
    main()
