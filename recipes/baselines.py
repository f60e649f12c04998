"""Baselines that need no training: the constant answer and 1-NN pixels."""

import numpy as np

import geovario_keras as gv


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
