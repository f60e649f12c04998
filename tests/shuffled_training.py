"""Trains the README's configuration with `fit(shuffle=True)` over seeds and
prints each seed's last-epoch loss as JSON.

Run by `tests/data_order_test.py` once per backend, in a fresh process:

    KERAS_BACKEND=tensorflow python tests/shuffled_training.py 1 2 3

Each backend draws its own initial weights and its own data order from the
seed, as a user's notebook does; only the distribution of the results over
seeds can then be compared between backends. The data: 3,000 points at
random on land and sea, with 768-d "features" that are a smooth function of
the location plus noise (`tests.testing.toy_features`).
"""

import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import geovario_keras as gv  # noqa: E402
from tests.testing import random_gps  # noqa: E402
from tests.testing import toy_features  # noqa: E402

ROWS, EPOCHS, BATCH = 3000, 3, 128


def last_epoch_loss(seed):
    gps = random_gps(ROWS, seed=0, max_lat=70.0)
    x = toy_features(gps, dim=768, seed=0)
    keras.utils.set_random_seed(seed)
    model = gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            backbone=None, embed_dim=128, hidden_units=256
        ),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 16, 256),
            hidden_units=256,
            hidden_layers=2,
            embed_dim=128,
        ),
        queue_size=1024,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=gv.losses.GeoContrastiveLoss(),
    )
    history = model.fit(x, gps, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    return float(history.history["loss"][-1])


if __name__ == "__main__":
    seeds = [int(s) for s in sys.argv[1:]] or [1, 2, 3]
    print(json.dumps({str(s): last_epoch_loss(s) for s in seeds}))
