"""Per-step overhead of training, every backend side by side.

A tiny GeoCLIP whose arithmetic is negligible (768 -> 32 -> 16 image MLP;
3 Fourier branches of 16 features, 2 hidden layers of 32, 16-d
embeddings; batch 64, queue 256), so the time per training step is the
framework's own cost: Python, layer calls, operator dispatch, the
optimizer update. On a GPU, a model of GeoCLIP's size is bound by this
cost, which is what this measures on a CPU.

Per backend, in its own process (`KERAS_BACKEND`), `model.fit` of two
models in turn, one epoch of `--steps` steps each per repeat, after a
warm-up epoch (compilation): the plain loss (`GeoContrastiveLoss`) and
the semivariogram loss with its callback (`SemivariogramContrastiveLoss`,
a fitted variogram set so every branch runs; the callback's refit after
each epoch is timed apart, as it is once per epoch). The figure is the best
epoch's time per step (the least disturbed by the shared machine), and
the semivariogram loss's share is read within one process. `--torch-
compile` adds PyTorch with `jit_compile=True` (torch.compile).

    python benchmarks/step_overhead.py                 # all three backends
    python benchmarks/step_overhead.py --backends jax torch --repeats 5

Results: BENCHMARKS.md, "Per-step overhead".
"""

import argparse
import sys
import time

import harness
import numpy as np

BATCH, QUEUE, FEATURES = 64, 256, 768
LOSSES = ("plain", "semivariogram")


def tiny_model(loss_name, jit_compile="auto", noise=True):
    import keras

    import geovario_keras as gv

    keras.utils.set_random_seed(0)
    model = gv.GeoCLIP(
        gv.layers.ImageEncoder(None, embed_dim=16, hidden_units=32),
        gv.layers.LocationEncoder(
            num_features=16,
            hidden_units=32,
            hidden_layers=2,
            embed_dim=16,
            seed=0,
        ),
        queue_size=QUEUE,
        seed=0,
        gps_noise_m=(150.0, 1000.0) if noise else (0.0, 0.0),
    )
    if loss_name == "plain":
        loss = gv.losses.GeoContrastiveLoss()
    else:
        loss = gv.losses.SemivariogramContrastiveLoss()
        model.variogram.set_fit(harness.typical_variogram_fit())
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=loss,
        jit_compile=jit_compile,
    )
    return model


def callbacks_for(loss_name, refits):
    """The semivariogram callback (refit after every epoch), its epoch-end
    time (the refit, once per epoch, not per step) recorded in `refits`
    to be left out of the epoch's time."""
    import geovario_keras as gv

    if loss_name == "plain":
        return []

    class Timed(gv.callbacks.SemivariogramCallback):
        def on_epoch_end(self, epoch, logs=None):
            start = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            refits.append(time.perf_counter() - start)

    return [Timed()]


def measure(steps, repeats, jit_compile, noise=True):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * BATCH, FEATURES)).astype("float32")
    y = np.stack(
        [
            np.degrees(np.arcsin(rng.uniform(-1, 1, steps * BATCH))),
            rng.uniform(-180, 180, steps * BATCH),
        ],
        1,
    ).astype("float32")
    times = {name: [] for name in LOSSES}
    refits = []

    models = {name: tiny_model(name, jit_compile, noise) for name in LOSSES}
    warmup = {}
    for _ in range(repeats + 1):
        for name, model in models.items():
            model.fit(
                x,
                y,
                batch_size=BATCH,
                epochs=1,
                shuffle=False,
                verbose=0,
                # The variogram callback runs first: its refit is left out.
                callbacks=[
                    harness.epoch_timer(
                        times, name, refits if name != "plain" else None
                    )
                ]
                + callbacks_for(name, refits),
            )
            warmup.setdefault(name, times[name][0])
    out = {
        "backend": keras.backend.backend(),
        "jit_compile": str(jit_compile),
        "noise": noise,
        "steps": steps,
    }
    for name in LOSSES:
        loss = models[name].evaluate(x[:BATCH], y[:BATCH], verbose=0)
        if not np.all(np.isfinite(loss)):
            raise RuntimeError(f"non-finite {name} loss: {loss}")
        out[f"{name}_ms"] = 1000 * min(times[name][1:]) / steps
        out[f"{name}_warmup_s"] = warmup[name]
    out["semivariogram_share"] = out["semivariogram_ms"] / out["plain_ms"] - 1
    out["refit_ms"] = 1000 * min(refits[1:])
    return out


def table(rows):
    jax = next((r for r in rows if r["backend"] == "jax"), None)
    lines = [
        "| backend | jit_compile | noise | plain ms/step | x JAX | "
        "semivariogram ms/step | semivariogram share | warm-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["plain_ms"] / jax["plain_ms"] if jax else float("nan")
        lines.append(
            f"| {r['backend']} | {r['jit_compile']} | {r['noise']} | "
            f"{r['plain_ms']:.2f} | "
            f"{ratio:.2f} | {r['semivariogram_ms']:.2f} | "
            f"{100 * r['semivariogram_share']:+.0f} % | "
            f"{r['plain_warmup_s']:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends", nargs="*", default=["jax", "tensorflow", "torch"]
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument(
        "--no-noise",
        action="store_true",
        help="diagnosis: without the GPS noise (gps_noise_m=(0, 0))",
    )
    parser.add_argument("--jit-compile", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    harness.add_standard_args(parser)
    args = parser.parse_args()
    if args.single:
        jit = {"auto": "auto", "True": True, "False": False}[args.jit_compile]
        result = measure(args.steps, args.repeats, jit, not args.no_noise)
        harness.emit(result, args.json)
        return
    runs = [(b, "auto") for b in args.backends]
    if args.torch_compile:
        runs.append(("torch", "True"))
    print(harness.machine(), flush=True)
    rows = []
    for backend, jit in runs:
        argv = ["--single", "--steps", str(args.steps)]
        argv += ["--repeats", str(args.repeats), "--jit-compile", jit]
        argv += ["--no-noise"] if args.no_noise else []
        row = harness.run_child(__file__, argv, backend, args.json)
        if row is not None:
            rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
