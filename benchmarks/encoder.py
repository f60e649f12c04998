"""Location-encoder throughput and per-query prediction latency.

One implementation per process (`--impl`):

- `reference`: the geoclip 1.3.0 wheel's own PyTorch `GeoCLIP` (run by
  `geovario_keras/testing/reference_geoclip.py`), on CUDA when present.
  Encoding is its `location_encoder` under `torch.no_grad()`; a query is
  its `predict` minus the image loading: `forward(features, gps_gallery)`,
  softmax, `topk`, which re-encodes the 100K gallery on every call.
- `keras`: geovario-keras on the backend named by `KERAS_BACKEND`, with the
  same released weights (`gv.pretrained.geoclip_model`), under the dtype
  policy `--policy`. Encoding is `model.encode_location` (a compiled
  `predict`: XLA on TensorFlow and JAX; torch runs eagerly); a query is
  `model.predict_gps` over the cached gallery.

Every time is the median of `--repeats` runs after a warm-up run, which
includes compilation and is reported apart. Throughput is also given in
GFLOP/s (18.9 MFLOP per point). Peak memory is measured per phase.

With `--save DIR` the gallery embeddings and those of `--queries` random
query points are written to `DIR/<backend>-<policy>.npz`, so that
`run_all.py` can compare the top-1 gallery answer under a mixed-precision
policy with float32's.

If one encoding pass would take longer than `--max-pass-seconds` (e.g.
bfloat16 on a CPU without bfloat16 arithmetic, where it is emulated), the
gallery is cut to fit and the result says so (`points`).

Run: `KERAS_BACKEND=jax python benchmarks/encoder.py --impl keras`.
"""

import os
import time

import harness
import numpy as np


def query_points(n, seed=0):
    """`n` points uniform on the sphere (lat, lon degrees), float32."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.stack([lat, lon], 1).astype("float32")


def bench_reference(args, gallery):
    import torch

    from geovario_keras.testing import reference_geoclip as geoclip_ref

    device = harness.torch_device()
    model = geoclip_ref.reference_geoclip(args.wheel).to(device).eval()
    encoder = model.location_encoder
    n = len(gallery)
    x = torch.from_numpy(gallery).to(device)

    def encode():
        with torch.no_grad():
            return [
                encoder(x[i : i + args.batch]) for i in range(0, n, args.batch)
            ]

    harness.reset_peak_memory()
    seconds, warmup = harness.timed(encode, args.repeats, harness.torch_sync)
    encode_memory = harness.peak_memory_mib()

    # The reference `predict`, from the features on: forward over the whole
    # gallery buffer, softmax, top-k (GeoCLIP.predict's own lines).
    model.gps_gallery = x
    features = torch.randn(1, 768, device=device)

    def predict():
        with torch.no_grad():
            logits = model.forward(features, model.gps_gallery)
            probs = logits.softmax(dim=-1)
            top = torch.topk(probs, 5, dim=1)
            return model.gps_gallery.index_select(0, top.indices[0]).cpu()

    harness.reset_peak_memory()
    query_s, query_warmup = harness.timed(predict, args.repeats)
    return {
        "encode_s": seconds,
        "encode_warmup_s": warmup,
        "encode_memory_mib": encode_memory,
        "query_s": query_s,
        "query_warmup_s": query_warmup,
        "query_memory_mib": harness.peak_memory_mib(),
    }


def bench_keras(args, gallery):
    import keras

    import geovario_keras as gv

    keras.config.set_dtype_policy(args.policy)
    model = gv.pretrained.geoclip_model(args.wheel, gallery=False, queue_size=0)
    result = {}

    # A pass over a small slice first: if the whole gallery would take too
    # long (emulated low precision), cut it.
    probe = gallery[: min(len(gallery), 256)]
    model.encode_location(probe)
    start = time.perf_counter()
    model.encode_location(probe)
    per_point = (time.perf_counter() - start) / len(probe)
    if per_point * len(gallery) > args.max_pass_seconds:
        keep = max(256, int(args.max_pass_seconds / per_point) // 256 * 256)
        gallery = gallery[: min(len(gallery), keep)]
        keep = len(gallery)
        args.batch = min(args.batch, keep)
        result["cut"] = (
            f"{per_point * 1e3:.2f} ms/point: gallery cut to {keep} points"
        )

    embeddings = {}

    def encode():
        embeddings["gallery"] = model.encode_location(
            gallery, batch_size=args.batch
        )
        return embeddings["gallery"]

    harness.reset_peak_memory()
    seconds, warmup = harness.timed(encode, args.repeats)
    result.update(
        encode_s=seconds,
        encode_warmup_s=warmup,
        encode_memory_mib=harness.peak_memory_mib(),
        points=len(gallery),
    )

    if args.save:
        os.makedirs(args.save, exist_ok=True)
        queries = model.encode_location(
            query_points(args.queries), batch_size=args.batch
        )
        path = os.path.join(
            args.save, f"{keras.backend.backend()}-{args.policy}.npz"
        )
        np.savez(path, gallery=embeddings["gallery"], queries=queries)
        result["saved"] = path

    # Per-query latency over the cached gallery (the embeddings just made).
    model.gallery.set(gallery, embeddings["gallery"])
    features = np.random.default_rng(0).normal(size=(1, 768)).astype("float32")
    harness.reset_peak_memory()
    query_s, query_warmup = harness.timed(
        lambda: model.predict_gps(features, top_k=5), max(args.repeats, 10)
    )
    result.update(
        query_s=query_s,
        query_warmup_s=query_warmup,
        query_memory_mib=harness.peak_memory_mib(),
    )
    return result


def main():
    parser = harness.implementation_parser(__doc__)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--save", default=None)
    parser.add_argument("--max-pass-seconds", type=float, default=30.0)
    args = parser.parse_args()

    import geovario_keras as gv

    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)[: args.points]
    if args.impl == "reference":
        if args.policy != "float32":
            parser.error("the reference runs in float32 only")
        result = bench_reference(args, gallery)
        result["points"] = len(gallery)
        name = "reference PyTorch"
    else:
        result = bench_keras(args, gallery)
        name = "geovario-keras"
    result.update(
        benchmark="encoder",
        impl=args.impl,
        name=name,
        backend="torch" if args.impl == "reference" else gv_backend(),
        policy=args.policy,
        batch=args.batch,
        repeats=args.repeats,
        points_per_s=result["points"] / result["encode_s"],
        gflops=result["points"]
        * harness.FLOP_PER_POINT
        / result["encode_s"]
        / 1e9,
    )
    harness.emit(result, args.json)


def gv_backend():
    import keras

    return keras.backend.backend()


if __name__ == "__main__":
    main()
