"""# GeoCLIP vs the semivariogram loss on real imagery, with ablations

The main job (`make demo`). On the embedded Blue Marble data set, the same
model is trained with the same budget under five losses, for several seeds:

| method | loss |
|---|---|
| geoclip | plain InfoNCE (GeoCLIP) |
| semivariogram | `SemivariogramContrastiveLoss` + `SemivariogramCallback` |
| sv_false_only | the same, false-negative down-weighting only |
| sv_hard_only | the same, hard-negative up-weighting only |
| robinson | similarity-weighted hard negatives, no variogram [1] |

It also scores a non-learned 1-nearest-neighbour retrieval baseline (the
location of the most similar training patch; Hays & Efros' Im2GPS). It
prints a mean ± std table (Markdown) and writes it, with a PNG, to
`--out`. It saves the fitted variogram of the first semivariogram run and
exports that model for TF Serving (`saved_models/blue_marble/<version>/`).

[1] Robinson et al., "Contrastive Learning with Hard Negative Samples",
ICLR 2021 (`gv.losses.HardNegativeContrastiveLoss`, beta = 1).

Run: `make demo`, or `python recipes/compare.py [--full] [--seeds 0 1 2]
[--epochs N]`. Backend: `KERAS_BACKEND` (`make demo` uses jax).
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import geovario_keras as gv  # noqa: E402

sys.stdout.reconfigure(line_buffering=True)  # progress shows in logs too

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--full", action="store_true", help="full-size run")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--epochs", type=int, default=None)
parser.add_argument(
    "--methods", nargs="+", default=list(common.METHODS), choices=common.METHODS
)
parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
parser.add_argument(
    "--num-places", type=int, default=None, help="smaller data (smoke runs)"
)
parser.add_argument("--out", default=os.path.join("artifacts", "compare"))
parser.add_argument(
    "--export",
    default=os.path.join("saved_models", "blue_marble"),
    help="SavedModel base folder ('' to skip the export)",
)
args = parser.parse_args()
EPOCHS = args.epochs or (20 if args.full else 8)
os.makedirs(args.out, exist_ok=True)
start = time.time()
print(f"backend: {keras.backend.backend()} | geovario-keras {gv.__version__}")

# ## 1. Data: Blue Marble patches at real places (built on first use)
overrides = {}
if args.num_places:
    overrides = {
        "num_places": args.num_places,
        "num_test": args.num_places // 8,
    }
builder = gv.data.blue_marble(
    "full" if args.full else "default", data_dir=args.data_dir, **overrides
)
train = gv.data.as_arrays(builder, "train")
test = gv.data.as_arrays(builder, "test")
meta = dict(builder.info.metadata)
gallery = common.gallery_for(test["gps"])
print(
    f"train {len(train['gps'])}, test {len(test['gps'])} "
    f"(>= {meta['min_train_test_distance_km']:.0f} km from train; "
    f"{meta['num_dropped_near_test']} places dropped), patches "
    f"{meta['patch_size']} px at {meta['spacing_km']:.1f} km/px, gallery "
    f"{len(gallery)} GeoNames places"
)

# ## 2. Baselines that need no training
results = {}
nn_report, _ = common.nearest_neighbour_baseline(train, test)
results["nearest_neighbour"] = [nn_report]
mean_gps = train["gps"][::10]
medoid = mean_gps[
    np.argmin(
        np.asarray(gv.geo.pairwise_haversine_km(mean_gps, mean_gps)).sum(1)
    )
]
results["constant"] = [
    gv.metrics.geolocation_report(
        np.repeat(medoid[None], len(test["gps"]), 0),
        test["gps"],
        admin_levels=True,
        true_labels={k: test[k] for k in gv.metrics.ADMIN_LEVELS},
    )
]

# ## 3. The five losses, same model and budget, several seeds
first_sv = None
for seed in args.seeds:
    for method in args.methods:
        model, history, seconds, callbacks = common.train(
            method, train, seed, EPOCHS, verbose=0
        )
        report, _, _ = common.evaluate(model, test, gallery)
        report["train_s"] = seconds
        if callbacks:
            fit = callbacks[0].last_fit
            report["variogram_range_km"] = fit.effective_range_km
            report["false_negative_frac"] = history.history[
                "false_negative_frac"
            ][-1]
            report["hard_negative_frac"] = history.history[
                "hard_negative_frac"
            ][-1]
        results.setdefault(method, []).append(report)
        print(
            f"seed {seed} {method:>14}: median {report['median_km']:7.0f} km"
            f", acc@750 {report['acc_750km']:5.1f} %, country "
            f"{report['acc_country']:5.1f} % ({seconds:.0f} s)"
        )
        if method == "semivariogram" and first_sv is None:
            first_sv = (model, callbacks[0])

# ## 4. The table
KEYS = [
    ("acc_25km", "25 km"),
    ("acc_200km", "200 km"),
    ("acc_750km", "750 km"),
    ("acc_2500km", "2500 km"),
    ("median_km", "median km"),
    ("mean_km", "mean km"),
    ("geoscore", "GeoScore"),
    ("acc_country", "country"),
    ("acc_region", "region"),
    ("acc_city", "city"),
]
NAMES = dict(common.METHODS)
NAMES["nearest_neighbour"] = "1-NN raw pixels (no training)"
NAMES["constant"] = "constant: the train medoid"


def cell(values, key):
    v = np.array([r[key] for r in values], float)
    fmt = ".0f" if key in ("median_km", "mean_km", "geoscore") else ".1f"
    if len(v) == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"


lines = [
    "| method | runs | " + " | ".join(label for _, label in KEYS) + " |",
    "|---|---|" + "---|" * len(KEYS),
]
for method, reports in results.items():
    lines.append(
        f"| {NAMES[method]} | {len(reports)} | "
        + " | ".join(cell(reports, key) for key, _ in KEYS)
        + " |"
    )
table = "\n".join(lines)
setting = (
    f"Blue Marble `{builder.builder_config.name}`: {len(train['gps'])} train /"
    f" {len(test['gps'])} test patches of {meta['patch_size']} px at "
    f"{meta['spacing_km']:.0f} km/px, test >= "
    f"{meta['min_train_test_distance_km']:.0f} km from train; {EPOCHS} "
    f"epochs, batch 256, queue 1024, seeds {args.seeds}, backend "
    f"{keras.backend.backend()}. Accuracies in %, top-1 over "
    f"{len(gallery)} GeoNames places; mean ± std over seeds."
)
# Seeds move every method a lot (the same seed gives the same
# initialisation and data order), so also compare each loss with plain
# GeoCLIP seed by seed.
paired = []
if "geoclip" in results and len(args.seeds) > 1:
    base = results["geoclip"]
    paired.append(
        "Paired with plain GeoCLIP, seed by seed (wins = lower median error):"
    )
    for method in args.methods:
        if method == "geoclip":
            continue
        diff = np.array(
            [
                r["median_km"] - b["median_km"]
                for r, b in zip(results[method], base)
            ]
        )
        acc = np.array(
            [
                r["acc_750km"] - b["acc_750km"]
                for r, b in zip(results[method], base)
            ]
        )
        paired.append(
            f"- {NAMES[method]}: wins {int((diff < 0).sum())}/{len(diff)}; "
            f"median km {diff.mean():+.0f} (per seed: "
            + ", ".join(f"{d:+.0f}" for d in diff)
            + f"); acc@750 km {acc.mean():+.1f} points"
        )
paired = "\n".join(paired)
print("\n" + table + "\n\n" + setting + "\n\n" + paired)
with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table + "\n\n" + setting + "\n\n" + paired + "\n")
with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"setting": setting, "results": results}, f, indent=1)

# ## 5. Plots: the metrics with their spread, and the fitted variogram
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 3, figsize=(14, 4))
for ax, key in zip(axes, ("acc_750km", "acc_2500km", "median_km")):
    names = list(results)
    means = [np.mean([r[key] for r in results[m]]) for m in names]
    stds = [np.std([r[key] for r in results[m]]) for m in names]
    ax.barh(range(len(names)), means, xerr=stds, color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names if ax is axes[0] else [])
    ax.set_title(key)
    ax.invert_yaxis()
fig.tight_layout()
png = os.path.join(args.out, "results.png")
fig.savefig(png, dpi=100)
plt.close(fig)
outputs = [os.path.join(args.out, "results.md"), png]
if first_sv is not None:
    model, callback = first_sv
    vario = os.path.join(args.out, "variogram.png")
    callback.plot(callback.last_empirical, callback.last_fit, vario)
    outputs.append(vario)
    fit = callback.last_fit
    print(
        f"fitted {fit.family} variogram (seed {args.seeds[0]}): nugget "
        f"{fit.nugget:.3f}, sill {fit.sill:.3f}, effective range "
        f"{fit.effective_range_km:.0f} km"
    )
    if args.export:
        path = gv.export.export_saved_model(model, args.export, top_k=5)
        outputs.append(path)
print("wrote " + ", ".join(outputs))
print(f"total {time.time() - start:.0f} s")
