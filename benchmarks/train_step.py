"""Training-step time: GeoCLIP loss vs semivariogram loss vs the reference.

One implementation per process (`--impl`), at GeoCLIP's training size:
batch 512, GPS queue 4096, 768-d CLIP features, the full-size released
location encoder and image head, Adam at 3e-5.

- `reference`: the geoclip 1.3.0 wheel's own `train()` (its
  `train/train.py`, verbatim) on its own `GeoCLIP` module, one call per
  repeat over `--steps` batches. Its image side takes the 768-d features
  (the CLIP backbone, frozen in GeoCLIP, is not in the wheel), as ours does.
- `keras`: `model.fit` of `gv.pretrained.geoclip_model` on the backend of
  `KERAS_BACKEND`, one model per `--loss`: `geo` (`GeoContrastiveLoss`)
  and `semivariogram` (`SemivariogramContrastiveLoss` with a fitted
  variogram set, so the re-weighting and the in-step pair statistics run).
  The queue is filled before timing, as in steady-state training. One
  epoch of `--steps` steps is one repeat, the models taking turns (so the
  overhead is read within one process, under the same drift); the first
  epoch of each is the warm-up (it includes compilation).

The figure is the median over `--repeats` repeats of the time per step.

Run: `KERAS_BACKEND=jax python benchmarks/train_step.py --impl keras`.
"""

import contextlib
import io
import statistics

import harness
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

    from geovario_keras.testing import reference_geoclip as geoclip_ref

    device = harness.torch_device()
    model = geoclip_ref.reference_geoclip(args.wheel, queue_size=QUEUE)
    model = model.to(device).train()
    train = geoclip_ref.reference_train_function(args.wheel)
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

    harness.reset_peak_memory()
    seconds, warmup = harness.timed(epoch, args.repeats, harness.torch_sync)
    return seconds / args.steps, warmup, harness.peak_memory_mib()


def keras_model(args, gallery, loss_name):
    """A compiled full-size GeoCLIP with a full queue, ready to step."""
    import keras

    import geovario_keras as gv

    model = gv.pretrained.geoclip_model(
        args.wheel, gallery=False, queue_size=QUEUE, seed=0
    )
    if loss_name == "geo":
        loss = gv.losses.GeoContrastiveLoss()
    else:
        loss = gv.losses.SemivariogramContrastiveLoss()
        model.variogram.set_fit(harness.typical_variogram_fit())
    jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
    model.compile(
        optimizer=keras.optimizers.Adam(3e-5), loss=loss, jit_compile=jit
    )
    # Steady state: a full queue.
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(QUEUE, model.embed_dim)).astype("float32")
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    model.queue.enqueue(gallery[rng.choice(len(gallery), QUEUE)], feats)
    return model


def bench_keras(args, gallery):
    """Per loss: (s per step, warm-up s, peak memory, XLA), interleaved.

    The models for the losses step in turn, one epoch each per repeat, so
    that the machine's drift hits them alike and the overhead of the
    semivariogram loss is read within one process.
    """
    import keras

    keras.config.set_dtype_policy(args.policy)
    x, y = batches(gallery, args.steps)
    times = {}
    models, memory = {}, {}
    for name in args.loss:
        times[name] = []
        harness.reset_peak_memory()
        before = harness.current_rss_mib()
        models[name] = keras_model(args, gallery, name)
        models[name].fit(  # warm-up: compilation
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[harness.epoch_timer(times, name)],
        )
        memory[name] = harness.peak_memory_mib()
        memory[name]["host_increase"] = memory[name]["host_rss"] - before
    for _ in range(args.repeats):
        for name, model in models.items():
            model.fit(
                x,
                y,
                batch_size=BATCH,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[harness.epoch_timer(times, name)],
            )
    out = {}
    for name, model in models.items():
        loss_value = model.evaluate(x[:BATCH], y[:BATCH], verbose=0)
        if not np.all(np.isfinite(loss_value)):
            raise RuntimeError(f"non-finite {name} loss: {loss_value}")
        out[name] = (
            statistics.median(times[name][1:]) / args.steps,
            times[name][0],
            memory[name],
            bool(model.jit_compile),
        )
    return out


def main():
    parser = harness.implementation_parser(__doc__)
    parser.add_argument(
        "--loss",
        nargs="+",
        choices=("geo", "semivariogram"),
        default=["geo", "semivariogram"],
        help="losses to time, interleaved in this process",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="Keras `jit_compile` (auto: XLA on JAX, and on TensorFlow "
        "when a GPU is present; torch runs eagerly)",
    )
    args = parser.parse_args()

    import geovario_keras as gv

    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)
    base = {
        "benchmark": "train_step",
        "impl": args.impl,
        "policy": args.policy,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    if args.impl == "reference":
        step, warmup, memory = bench_reference(args, gallery)
        harness.emit(
            dict(
                base,
                name="reference PyTorch",
                backend="torch",
                loss="geo",
                jit=False,
                step_s=step,
                warmup_s=warmup,
                memory_mib=memory,
            ),
            args.json,
        )
        return
    import keras

    for loss, (step, warmup, memory, jit) in bench_keras(args, gallery).items():
        harness.emit(
            dict(
                base,
                name="geovario-keras",
                backend=keras.backend.backend(),
                loss=loss,
                jit=jit,
                step_s=step,
                warmup_s=warmup,
                memory_mib=memory,
            ),
            args.json,
        )


if __name__ == "__main__":
    main()
