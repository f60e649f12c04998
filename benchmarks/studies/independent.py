"""geovario-keras against an independent plain-PyTorch GeoCLIP, same data.

Trains one configuration with the plain GeoCLIP loss (and, with
`--losses ... semivariogram`, the semivariogram loss of Chen et al. 2025)
twice on the default Blue Marble data, with the same inputs, budget and
evaluation:

- **geovario-keras** (`gv.GeoCLIP`, the backend of `KERAS_BACKEND`), and
- **plain PyTorch**: `torch_reference.py`, this study's own implementation
  of the published specifications (its docstring lists them), written
  from the papers and the reference code's layout, not from
  geovario-keras.

Configuration: inputs are the flattened patches (uint8 / 255), image head
512 -> 256, location encoder sigmas (1, 16, 256) with 256 Fourier
features, 2 x 512 hidden and a 256-d output, queue 2048, batch 256, Adam
1e-3, no GPS noise in either. Both are scored by top-1 retrieval over the
same GeoNames gallery; the accuracies are computed here with numpy.

Options isolate the initialisation: `--keras-init torch` gives the Keras
model torch's `nn.Linear` kernel initialiser, U(+-1/sqrt(fan_in));
`--torch-init glorot` gives the torch model Keras's (Glorot-uniform
kernels, zero biases). `--torch-adam-eps 1e-7` uses Keras's Adam epsilon,
and `--torch-adam keras` Keras's Adam update rule (where the epsilon is
added). `--trace` prints both sides' loss step by step.
`--torch-logit-cap 0 100` runs the torch model without (the reference)
and with CLIP's cap of the temperature at 100, which geovario-keras has.
`--data-order shared` feeds the Keras model the torch side's batches in
the torch side's order (otherwise each shuffles for itself), so that with
`--torch-init copy_keras_glorot` the two start from the same weights and
see the same batches: what still differs is the code.

Run: `KERAS_BACKEND=jax python benchmarks/studies/independent.py
[--epochs 10] [--seeds 0 1] [--keras-init glorot torch] [--torch-init
default glorot] [--losses geoclip semivariogram] [--data-order
own|shared]`. Results: BENCHMARKS.md.
"""

import argparse
import functools
import os
import sys
import time

import numpy as np
import torch_reference

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "..", "recipes")
)

THRESHOLDS_KM = (25, 200, 750, 2500)
# --torch-init values that copy the Keras model's initial weights: the
# Keras model's --keras-init and the parts copied.
COPIED_STARTS = {
    "copy_keras_glorot": ("glorot", ("dense", "fourier")),
    "copy_keras_torch": ("torch", ("dense", "fourier")),
    "copy_keras_torch_dense": ("torch", ("dense",)),
    "copy_keras_torch_fourier": ("torch", ("fourier",)),
}


def haversine_km(a, b):
    """Great-circle km between rows of `a` and `b` (degrees), numpy."""
    a, b = np.radians(a), np.radians(b)
    h = (
        np.sin((b[:, 0] - a[:, 0]) / 2) ** 2
        + np.cos(a[:, 0])
        * np.cos(b[:, 0])
        * np.sin((b[:, 1] - a[:, 1]) / 2) ** 2
    )
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def scores(pred, true):
    d = haversine_km(pred, true)
    out = {f"acc_{t}km": 100.0 * np.mean(d <= t) for t in THRESHOLDS_KM}
    out["median_km"] = float(np.median(d))
    return out


def copy_keras_start(model, seed, init, parts=("dense", "fourier")):
    """Loads the initial weights of `train_keras(init=init)`'s model (same
    seed) into the torch model: kernels (transposed), biases, the Fourier
    matrices and the logit scale, so both start from the same numbers and
    only the training code differs."""
    import keras
    import torch

    keras_model = make_keras_model(seed, init)
    keras_model.build((None, model.image[0].in_features))

    def value(layer, name):
        w = getattr(layer, name)
        return torch.from_numpy(np.array(keras.ops.convert_to_numpy(w)))

    def load(linear, dense):
        with torch.no_grad():
            linear.weight.copy_(value(dense, "kernel").T)
            linear.bias.copy_(value(dense, "bias"))

    image = keras_model.image_encoder
    if "dense" in parts:
        load(model.image[0], image.hidden)
        load(model.image[2], image.head)
    enc = keras_model.location_encoder
    for i, branch in enumerate(model.branches):
        layers = {
            w.path.split("/")[-2]: w for w in enc.weights if f"_{i}" in w.path
        }
        if "fourier" in parts:
            with torch.no_grad():
                branch.b.copy_(
                    torch.from_numpy(
                        np.array(keras.ops.convert_to_numpy(layers[f"rff_{i}"]))
                    )
                )
        names = ("dense_0", "dense_1", "head") if "dense" in parts else ()
        for j, name in zip((0, 2, 4), names):
            kernel = [
                w
                for w in enc.weights
                if w.path.endswith(f"branch_{i}_{name}/kernel")
            ][0]
            bias = [
                w
                for w in enc.weights
                if w.path.endswith(f"branch_{i}_{name}/bias")
            ][0]
            with torch.no_grad():
                branch.mlp[j].weight.copy_(
                    torch.from_numpy(np.array(kernel.numpy())).T
                )
                branch.mlp[j].bias.copy_(
                    torch.from_numpy(np.array(bias.numpy()))
                )
    with torch.no_grad():
        model.logit_scale.copy_(
            torch.tensor(float(keras_model.logit_scale.numpy()))
        )
        # Same start, same forward pass: the two implementations' location
        # and image embeddings of a few inputs must agree.
        rng = np.random.default_rng(0)
        gps = rng.uniform([-80, -180], [80, 180], (64, 2)).astype("float32")
        x = rng.uniform(0, 1, (8, model.image[0].in_features))
        x = x.astype("float32")
        loc = model.locations(torch.from_numpy(gps)).numpy()
        img = model.images(torch.from_numpy(x)).numpy()
    print(
        "  copied start: max |location embedding difference| "
        f"{np.abs(loc - keras_model.encode_location(gps)).max():.1e}, "
        f"image {np.abs(img - keras_model.encode_image(x)).max():.1e}"
    )


def make_keras_model(seed, init):
    """The geovario-keras model of this comparison (not yet trained)."""
    import keras

    import geovario_keras as gv

    keras.utils.set_random_seed(seed)
    dense = {}
    if init == "torch":  # torch.nn.Linear's kernel: U(+-1/sqrt(fan_in))
        dense = {
            "kernel_initializer": keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_in", "uniform"
            )
        }
    return gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            None, embed_dim=256, hidden_units=512, **dense
        ),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 16, 256),
            num_features=256,
            hidden_units=512,
            hidden_layers=2,
            embed_dim=256,
            seed=seed,
            **dense,
        ),
        queue_size=2048,
        gps_noise_m=(0.0, 0.0),
        seed=seed,
    )


def shared_order_batches(train_x, train_gps, batch, seed, epochs):
    """A `keras.utils.PyDataset` in the torch side's data order.

    Epoch `e` visits `order[e] = rng.permutation(N)` (one numpy generator
    seeded with `seed`, one permutation per epoch, as `train_torch` draws
    them) in `N // batch` full batches; the last partial batch is dropped,
    as on the torch side. Item `k` is batch `k % (N // batch)` of epoch
    `k // (N // batch)`, so `fit(..., steps_per_epoch=N // batch,
    shuffle=False)` reads the items in order without relying on Keras's
    epoch hooks.
    """
    import keras

    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(len(train_x)) for _ in range(epochs)]
    )
    steps = len(train_x) // batch

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return epochs * steps

        def __getitem__(self, k):
            e, i = divmod(k, steps)
            start = e * len(train_x) + i * batch
            idx = order[start : start + batch]
            return train_x[idx], train_gps[idx]

    return Batches(), steps


def StepLosses(trace):
    """A callback appending each training step's own loss to `trace`.

    Keras logs the running mean of the epoch; step `k`'s loss is
    `k * mean_k - (k - 1) * mean_(k-1)`.
    """
    import keras

    class Callback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.mean = 0.0

        def on_train_batch_end(self, batch, logs=None):
            mean = float(logs["loss"])
            trace.append((batch + 1) * mean - batch * self.mean)
            self.mean = mean

    return Callback()


def train_keras(
    train_x,
    train_gps,
    epochs,
    seed,
    init,
    batch=256,
    loss_name="geoclip",
    shared_order=False,
    trace=None,
):
    import keras

    import geovario_keras as gv

    model = make_keras_model(seed, init)
    steps = epochs * (len(train_x) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    loss, callbacks = None, []
    if loss_name == "semivariogram":
        loss = gv.losses.SemivariogramContrastiveLoss()
        callbacks = [
            gv.callbacks.SemivariogramCallback(
                verbose=int(bool(os.environ.get("INDEPENDENT_VERBOSE")))
            )
        ]
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    if trace is not None:
        callbacks = callbacks + [StepLosses(trace)]
    if shared_order:
        data, steps = shared_order_batches(
            train_x, train_gps, batch, seed, epochs
        )
        data, kwargs = (data,), {"steps_per_epoch": steps, "shuffle": False}
    else:  # Keras's own shuffle; the last partial batch is trained on
        data, kwargs = (train_x, train_gps), {"batch_size": batch}
    model.fit(*data, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)
    if loss_name == "semivariogram":
        print(
            f"  keras range {callbacks[0].last_fit.effective_range_km:.0f} km"
        )

    def predict(test_x, gallery):
        model.set_gallery(gallery, verbose=0)
        return model.predict_gps(test_x, top_k=1)[0][:, 0]

    return predict


def print_traces(traces):
    """Step-by-step loss of torch and Keras, and how far apart they are."""
    for (loss_name, seed, impl), torch_loss in traces.items():
        if impl != "torch" or (loss_name, seed, "keras") not in traces:
            continue
        a = np.asarray(torch_loss)
        b = np.asarray(traces[(loss_name, seed, "keras")])
        n = min(len(a), len(b))
        diff = np.abs(a[:n] - b[:n])
        print(f"\nstep losses, {loss_name} loss, seed {seed} ({n} steps):")
        for step in (1, 2, 5, 10, 20, 50, 100, 200, 300, n):
            if step <= n:
                print(
                    f"  step {step:>4}: torch {a[step - 1]:.5f}, keras "
                    f"{b[step - 1]:.5f}, |diff| {diff[step - 1]:.2e}; "
                    f"max |diff| so far {diff[:step].max():.2e}"
                )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--keras-init", nargs="*", default=["glorot", "torch"])
    parser.add_argument(
        "--torch-init",
        nargs="*",
        default=["default"],
        help="'default' (nn.Linear's), 'zero_bias' (nn.Linear's kernels, "
        "zero biases), 'glorot' (Keras's Dense), 'glorot_image' or "
        "'glorot_location' (Keras's Dense in one tower only), "
        "'copy_keras_glorot' / 'copy_keras_torch' (the exact initial "
        "weights of the Keras model with --keras-init glorot / torch, same "
        "seed; '_dense' or '_fourier' copies only those)",
    )
    parser.add_argument("--torch-adam-eps", type=float, default=1e-8)
    parser.add_argument(
        "--torch-adam",
        choices=("torch", "keras"),
        default="torch",
        help="torch.optim.Adam, or Adam with Keras's update rule (epsilon "
        "on the uncorrected sqrt(v); give --torch-adam-eps 1e-7 for "
        "Keras's value)",
    )
    parser.add_argument(
        "--torch-shuffle-seed",
        type=int,
        default=None,
        help="seed of the torch side's data order (default: the run's seed;"
        " the initial weights still come from the run's seed)",
    )
    parser.add_argument(
        "--data-order",
        choices=("own", "shared"),
        default="own",
        help="own: each side shuffles for itself (Keras also trains on the "
        "last partial batch); shared: the Keras side visits the torch "
        "side's batches in the same order (full batches only)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="record every training step's loss on both sides and print "
        "how far apart they are (use with --data-order shared and "
        "--torch-init copy_keras_glorot --keras-init glorot)",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        default=["geoclip"],
        choices=["geoclip", "semivariogram"],
    )
    parser.add_argument(
        "--torch-logit-cap",
        type=float,
        nargs="*",
        default=[0.0],
        help="caps of exp(logit_scale) on the torch side (0: none, as the "
        "reference; geovario-keras caps at 100, as CLIP); one run each",
    )
    parser.add_argument(
        "--data-dir", default=os.path.join("artifacts", "tensorflow_datasets")
    )
    return parser.parse_args(argv)


def load_data(data_dir):
    """Flattened train / test inputs, coordinates and the gallery."""
    import experiment

    _, train, test = experiment.load_blue_marble(data_dir=data_dir)

    def flat(images):
        return (images.reshape(len(images), -1) / 255.0).astype("float32")

    return {
        "train_x": flat(train["image"]),
        "train_gps": train["gps"].astype("float32"),
        "test_x": flat(test["image"]),
        "test_gps": test["gps"],
        "gallery": experiment.gallery_for(test["gps"]),
    }


def planned_runs(args):
    """`(name, (impl, init), loss_name)` of every implementation to run."""
    runs = [
        (
            f"plain PyTorch, {i} init"
            + (f", cap {c:g}" if c else "")
            + (", Keras's Adam rule" if args.torch_adam == "keras" else ""),
            ("torch", (i, c or None)),
        )
        for i in args.torch_init
        for c in args.torch_logit_cap
    ]
    runs += [
        (f"geovario-keras, {i} init", ("keras", i)) for i in args.keras_init
    ]
    return [
        (name + ("" if loss == "geoclip" else f", {loss} loss"), run, loss)
        for loss in args.losses
        for name, run in runs
    ]


def train_one(args, data, impl, init, loss_name, seed, trace):
    """Trains one implementation; returns its `predict(test_x, gallery)`."""
    x, gps = data["train_x"], data["train_gps"]
    if impl == "keras":
        return train_keras(
            x,
            gps,
            args.epochs,
            seed,
            init,
            loss_name=loss_name,
            shared_order=args.data_order == "shared",
            trace=trace,
        )
    torch_init, cap = init
    start = None
    if torch_init in COPIED_STARTS:  # the Keras model's start, same seed
        keras_init, parts = COPIED_STARTS[torch_init]
        start = functools.partial(
            copy_keras_start, seed=seed, init=keras_init, parts=parts
        )
    return torch_reference.train_torch(
        x,
        gps,
        args.epochs,
        seed,
        torch_init,
        args.torch_adam_eps,
        logit_cap=cap,
        loss_name=loss_name,
        shuffle_seed=args.torch_shuffle_seed,
        trace=trace,
        adam=args.torch_adam,
        start=start,
    )


def run(args, data):
    """Trains and scores every planned run on every seed.

    Returns `(rows, traces)`: the scores by run name (one per seed) and,
    with `--trace`, each side's step losses by (loss, seed, impl).
    """
    rows, traces = {}, {}
    for name, (impl, init), loss_name in planned_runs(args):
        for seed in args.seeds:
            start = time.time()
            trace = None
            if args.trace:
                trace = traces.setdefault((loss_name, seed, impl), [])
            predict = train_one(args, data, impl, init, loss_name, seed, trace)
            r = scores(
                predict(data["test_x"], data["gallery"]), data["test_gps"]
            )
            rows.setdefault(name, []).append(r)
            print(
                f"{name:>32} seed {seed}: "
                + " / ".join(f"{r[f'acc_{t}km']:.1f}" for t in THRESHOLDS_KM)
                + f", median {r['median_km']:.0f} km "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
    return rows, traces


def print_table(rows):
    """The mean over seeds of every run, as a markdown table."""
    print("\n| implementation | 25 km | 200 km | 750 km | 2500 km | median |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        mean = {k: np.mean([r[k] for r in rs]) for k in rs[0]}
        print(
            f"| {name} | "
            + " | ".join(f"{mean[f'acc_{t}km']:.1f}" for t in THRESHOLDS_KM)
            + f" | {mean['median_km']:.0f} km |"
        )


def main(argv=None):
    args = parse_args(argv)
    import keras

    import geovario_keras as gv

    data = load_data(args.data_dir)
    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), "
        f"geovario-keras {gv.__version__}; {len(data['train_x'])} train / "
        f"{len(data['test_x'])} test, inputs {data['train_x'].shape[1]}-d, "
        f"gallery {len(data['gallery'])}, {args.epochs} epochs"
    )
    rows, traces = run(args, data)
    if args.trace:
        print_traces(traces)
    print_table(rows)


if __name__ == "__main__":
    main()
