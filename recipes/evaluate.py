"""# Evaluate a saved GeoCLIP on the Blue Marble test split

Loads a `.keras` file (e.g. from `recipes/train.py`), keeps its cached
gallery or replaces it with the GeoNames gallery, predicts the top-k
locations of every test patch and prints the standard metrics: accuracy
within 1 / 25 / 200 / 750 / 2500 km, mean and median error, GeoScore, and
country / region / sub-region / city accuracy.

Run: `python recipes/evaluate.py artifacts/train/geoclip_semivariogram.keras
[--top-k 5] [--keep-gallery] [--full]`.
"""

import argparse
import os
import sys

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment  # noqa: E402

import geovario_keras as gv  # noqa: E402

sys.stdout.reconfigure(line_buffering=True)  # progress shows in logs too

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("model", help="path of a .keras file")
parser.add_argument("--top-k", type=int, default=5)
parser.add_argument(
    "--keep-gallery",
    action="store_true",
    help="use the gallery saved in the model instead of the GeoNames one",
)
parser.add_argument("--full", action="store_true")
parser.add_argument("--data-dir", default=experiment.DEFAULT_DATA_DIR)
args = parser.parse_args()

model = keras.saving.load_model(args.model, compile=False)
_, _, test = experiment.load_blue_marble(args.full, args.data_dir)
if not args.keep_gallery:
    model.set_gallery(experiment.gallery_for(test["gps"]), verbose=0)
coords, probs = model.predict_gps(test["image"], top_k=args.top_k)
report = gv.metrics.geolocation_report(
    coords[:, 0],
    test["gps"],
    admin_levels=True,
    true_labels={k: test[k] for k in gv.metrics.ADMIN_LEVELS},
)
# Oracle top-k: the best of the k answers (how often the right place is
# among them).
best = gv.geo.haversine_km(
    coords.reshape(-1, 2), test["gps"].repeat(args.top_k, 0)
)
best = keras.ops.convert_to_numpy(best).reshape(-1, args.top_k).min(1)
print(f"{args.model} on {len(test['gps'])} test patches:")
for key, value in report.items():
    print(
        f"  {key:>14}: {value:.2f}"
        if isinstance(value, float)
        else f"  {key:>14}: {value}"
    )
print(
    f"  top-{args.top_k} oracle: "
    + ", ".join(
        f"{100 * (best <= t).mean():.1f} % <= {t:g} km"
        for t in gv.metrics.THRESHOLDS_KM
    )
)
