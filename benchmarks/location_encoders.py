"""Location encoders side by side: throughput, training step, accuracy.

On the backend named by `KERAS_BACKEND`, in one process, for each encoder
at the demo's size (`recipes/harness.location_encoder`: width 256, depth 2,
128-d output) and for GeoCLIP's full-size Fourier encoder:

- **encode**: points per second of `inference.embed` (what
  `GeoCLIP.encode_location` and `set_gallery` run: one compiled function)
  over `--points` points uniform on the sphere, median of `--repeats`
  after a warm-up (compilation timed apart);
- **train step**: seconds per forward + backward pass + Adam update of the
  encoder alone on a batch of `--batch` points (the demo's batch 256 plus
  its queue of 1024), a squared-error target, compiled by `keras.Model.fit`
  machinery (`train_on_batch`);
- the ratio of each to the Fourier encoder of the same size.

With `--accuracy` it also prints the largest error of
`SphericalHarmonics(L)` (float32) against `scipy.special.sph_harm_y`
(float64) over 1,000 points (poles and seam included) per degree.

Run: `KERAS_BACKEND=jax python benchmarks/location_encoders.py --accuracy`.
"""

import argparse
import json
import os
import sys

import harness
import keras
import numpy as np

sys.path.insert(0, os.path.join(harness.ROOT, "recipes"))
import experiment  # noqa: E402

from geovario_keras import inference  # noqa: E402


def _recipe_encoder(name, seed=0):
    # The demo's exact encoder configurations are measured.
    return experiment.location_encoder(name, seed), experiment.ENCODERS


def uniform_points(n, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.stack([lat, lon], 1).astype("float32")


def measure(encoder, points, batch, repeats):
    encoder.build((None, 2))
    dim = encoder.embed_dim
    encode_s, encode_warm = harness.timed(
        lambda: inference.embed(encoder, points, dim, 4096), repeats
    )
    inputs = keras.Input((2,))
    model = keras.Model(inputs, encoder(inputs))
    model.compile(optimizer="adam", loss="mse")
    x = points[:batch]
    y = np.zeros((batch, dim), "float32")
    step_s, step_warm = harness.timed(
        lambda: model.train_on_batch(x, y), repeats * 5
    )
    return {
        "params": int(sum(np.prod(w.shape) for w in encoder.weights)),
        "encode_points_per_s": len(points) / encode_s,
        "encode_warmup_s": encode_warm,
        "train_step_ms": 1000 * step_s,
        "train_step_warmup_s": step_warm,
    }


def accuracy(degrees):
    import geovario_keras as gv
    from geovario_keras.testing.scipy_harmonics import real_harmonics

    gps = uniform_points(1000, seed=11)
    gps[:6] = [
        [90, 0],
        [-90, 77],
        [89.99, -180],
        [-89.99, 180],
        [0, 180],
        [44.9999, 10],
    ]
    print(
        "| degree L | features | max abs error | max abs error / max |Y| "
        "| median row error | finite |"
    )
    print("|---|---|---|---|---|---|")
    for degree in degrees:
        ours = keras.ops.convert_to_numpy(
            gv.layers.SphericalHarmonics(degree)(gps)
        ).astype("float64")
        ref = real_harmonics(gps, degree)
        err = np.abs(ours - ref)
        print(
            f"| {degree} | {ours.shape[1]} | {err.max():.1e} | "
            f"{err.max() / np.abs(ref).max():.1e} | "
            f"{np.median(err.max(1)):.1e} | {bool(np.isfinite(ours).all())} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=[
            "fourier",
            "spherical_harmonics",
            "sincos",
            "cartesian",
            "raw",
        ],
    )
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import geovario_keras as gv

    print(f"backend {keras.backend.backend()}; {harness.machine()}")
    points = uniform_points(args.points)
    rows = []
    for name in args.encoders:
        keras.utils.set_random_seed(0)
        encoder, names = _recipe_encoder(name)
        rows.append(
            (names[name], measure(encoder, points, args.batch, args.repeats))
        )
    keras.utils.set_random_seed(0)
    rows.append(
        (
            "GeoCLIP full size (Fourier, 3 x 1024-wide, 512-d)",
            measure(
                gv.layers.LocationEncoder(seed=0),
                points,
                args.batch,
                args.repeats,
            ),
        )
    )
    base = rows[0][1]
    print(
        f"\n| encoder ({keras.backend.backend()}) | parameters | encode "
        "points/s | vs Fourier | train step ms "
        f"(batch {args.batch}) | vs Fourier | compile s (encode / step) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(
            f"| {label} | {r['params']:,} | {r['encode_points_per_s']:,.0f} "
            f"| {r['encode_points_per_s'] / base['encode_points_per_s']:.2f}x"
            f" | {r['train_step_ms']:.1f} | "
            f"{r['train_step_ms'] / base['train_step_ms']:.2f}x | "
            f"{r['encode_warmup_s']:.1f} / {r['train_step_warmup_s']:.1f} |"
        )
        if args.json:
            with open(args.json, "a") as f:
                row = {"benchmark": "location_encoders", "encoder": label}
                row.update(backend=keras.backend.backend(), **r)
                f.write(json.dumps(row) + "\n")
    if args.accuracy:
        print()
        accuracy([10, 20, 40, 64, 100, 200])


if __name__ == "__main__":
    main()
