"""Training-step time: GeoCLIP loss vs semivariogram loss vs the reference.

One implementation per process (`--impl`), at GeoCLIP's training size:
batch 512, GPS queue 4096, 768-d CLIP features, the full-size released
location encoder and image head, Adam at 3e-5.

- `reference`: the geoclip 1.3.0 wheel's own `train()` (its
  `train/train.py`, verbatim) on its own `GeoCLIP` module, one call per
  repeat over `--steps` batches. Its image side takes the 768-d features
  (the CLIP backbone, frozen in GeoCLIP, is not in the wheel), as ours does.
- `keras`: `model.fit` of `gv.pretrained.geoclip_model` on the backend of
  `KERAS_BACKEND` with `--loss geo` (`GeoContrastiveLoss`) or
  `--loss semivariogram` (`SemivariogramContrastiveLoss` with a fitted
  variogram set, so the re-weighting and the in-step pair statistics run).
  The queue is filled before timing, as in steady-state training. One
  epoch of `--steps` steps is one repeat; the first epoch is the warm-up
  (it includes compilation).

The figure is the median over `--repeats` repeats of the time per step.

Run: `KERAS_BACKEND=jax python benchmarks/train_step.py --impl keras
--loss semivariogram`.
"""

import argparse
import contextlib
import io
import statistics
import time

import common
import numpy as np

BATCH = 512
QUEUE = 4096
FEATURES = 768


def batches(gallery, steps, seed=0):
    """`steps` batches of random 768-d features and real gallery GPS."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * BATCH, FEATURES)).astype("float32")
    y = gallery[rng.choice(len(gallery), steps * BATCH, replace=False)]
    return x, y


def bench_reference(args, gallery):
    import torch

    from tests.reference_geoclip import reference_geoclip
    from tests.reference_geoclip import reference_train_function

    device = common.torch_device()
    model = reference_geoclip(args.wheel, queue_size=QUEUE).to(device).train()
    train = reference_train_function(args.wheel)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-5)
    x, y = batches(gallery, args.steps)
    loader = [
        (torch.from_numpy(x[i : i + BATCH]), torch.from_numpy(y[i : i + BATCH]))
        for i in range(0, len(x), BATCH)
    ]

    def epoch():
        # `train` prints a tqdm bar; keep the benchmark's output readable.
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.redirect_stderr(io.StringIO()):
                train(loader, model, optimizer, 0, BATCH, device)

    common.reset_peak_memory()
    seconds, warmup = common.timed(epoch, args.repeats, common.torch_sync)
    return seconds / args.steps, warmup, common.peak_memory_mib()


def bench_keras(args, gallery):
    import keras

    import geovario_keras as gv

    keras.config.set_dtype_policy(args.policy)
    model = gv.pretrained.geoclip_model(
        args.wheel, gallery=False, queue_size=QUEUE, seed=0
    )
    if args.loss == "geo":
        loss = gv.losses.GeoContrastiveLoss()
    else:
        loss = gv.losses.SemivariogramContrastiveLoss()
        # A typical fit of the embedded data (range ~1,500 km), so that
        # false and hard negatives occur and every branch of the loss runs.
        model.variogram.set_fit(
            gv.semivariogram.VariogramFit(
                model="exponential",
                nugget=0.2,
                psill=0.6,
                length_scale=500.0,
                sill=0.8,
                effective_range_km=1500.0,
                converged=True,
            )
        )
    jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
    model.compile(
        optimizer=keras.optimizers.Adam(3e-5), loss=loss, jit_compile=jit
    )
    # Steady state: a full queue.
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(QUEUE, model.embed_dim)).astype("float32")
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    model.queue.enqueue(gallery[rng.choice(len(gallery), QUEUE)], feats)

    x, y = batches(gallery, args.steps)
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    common.reset_peak_memory()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=args.repeats + 1,
        shuffle=False,
        verbose=0,
        callbacks=[EpochTimer()],
    )
    memory = common.peak_memory_mib()
    loss_value = model.evaluate(x[:BATCH], y[:BATCH], verbose=0)
    if not np.all(np.isfinite(loss_value)):
        raise RuntimeError(f"non-finite loss after training: {loss_value}")
    return (
        statistics.median(times[1:]) / args.steps,
        times[0],
        memory,
        model.jit_compile,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=("reference", "keras"), required=True)
    parser.add_argument(
        "--loss", choices=("geo", "semivariogram"), default="geo"
    )
    parser.add_argument(
        "--policy",
        default="float32",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="Keras `jit_compile` (auto: XLA on JAX, and on TensorFlow "
        "when a GPU is present; torch runs eagerly)",
    )
    args = common.add_common_args(parser).parse_args()

    import geovario_keras as gv

    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)
    result = {"benchmark": "train_step", "impl": args.impl}
    if args.impl == "reference":
        step, warmup, memory = bench_reference(args, gallery)
        result.update(
            name="reference PyTorch", backend="torch", loss="geo", jit=False
        )
    else:
        step, warmup, memory, jit = bench_keras(args, gallery)
        import keras

        result.update(
            name="geovario-keras",
            backend=keras.backend.backend(),
            loss=args.loss,
            jit=bool(jit),
        )
    result.update(
        policy=args.policy,
        step_s=step,
        warmup_s=warmup,
        memory_mib=memory,
        steps=args.steps,
        repeats=args.repeats,
    )
    common.emit(result, args.json)


if __name__ == "__main__":
    main()
