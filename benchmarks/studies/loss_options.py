"""How the semivariogram loss's defaults were checked on a validation split.

On the validation split of the default Blue Marble *training* set that
`retrieval_options.py` uses (the test split is never read): 1,200 training
places held out as queries, the training places at least 25 km
(`--min-distance-km`) from all of them as training data; raw-pixel
1-nearest-neighbour retrieval is scored on the same split for scale.
Plain GeoCLIP and variants of `SemivariogramContrastiveLoss` are trained
with the demo's recipe and budget, scored with gallery prediction on the
held-out queries, and each variant is compared with plain GeoCLIP seed by
seed.

Run: `KERAS_BACKEND=jax python benchmarks/studies/loss_options.py [--seeds 0 1]
[--epochs 8] [--variants ...] [--min-distance-km 25]`. The result is in
BENCHMARKS.md.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "..", "recipes")
)

# name: keyword arguments of SemivariogramContrastiveLoss (None: plain);
# a "callback" entry holds those of SemivariogramCallback.
VARIANTS = {
    "plain GeoCLIP": None,
    "default": {},
    "false range 100 km": {"false_negative_range_km": 100.0},
    "false range 250 km": {"false_negative_range_km": 250.0},
    "false range 500 km": {"false_negative_range_km": 500.0},
    "false weight 0.5": {"false_negative_weight": 0.5},
    "false weight 0": {"false_negative_weight": 0.0},
    "hard beta 1": {"hard_negative_beta": 1.0},
    "hard clip 10": {"max_weight": 10.0},
    "Cressie fit": {"callback": {"weighting": "cressie"}},
    "both ranges 100 km": {
        "false_negative_range_km": 100.0,
        "hard_negative_range_km": 100.0,
    },
    "both ranges 250 km": {
        "false_negative_range_km": 250.0,
        "hard_negative_range_km": 250.0,
    },
    "both ranges 500 km": {
        "false_negative_range_km": 500.0,
        "hard_negative_range_km": 500.0,
    },
}
THRESHOLDS = (25, 200, 750, 2500)
NN = "1-NN raw pixels (no training)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=1200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--min-distance-km",
        type=float,
        default=25.0,
        help="held-out places' minimum distance from the training places "
        "(25: the test split's rule; 0: training imagery of the same "
        "ground may sit next to a query)",
    )
    parser.add_argument(
        "--data-dir", default=os.path.join("artifacts", "tensorflow_datasets")
    )
    args = parser.parse_args()

    import baselines
    import experiment

    import geovario_keras as gv

    acc = {}  # (variant, seed) -> accuracies
    for seed in args.seeds:
        fit, val = experiment.validation_split(
            args.data_dir, args.num_val, seed, args.min_distance_km
        )
        gallery = experiment.gallery_for(val["gps"])
        nn = baselines.nearest_neighbour_baseline(fit, val)[0]
        acc[NN, seed] = [nn[f"acc_{t}km"] for t in THRESHOLDS]
        acc[NN, seed].append(nn["median_km"])
        for name in args.variants:
            kwargs = VARIANTS[name]
            if kwargs is None:
                method = "geoclip"
            else:
                kwargs = dict(kwargs)
                callback = gv.callbacks.SemivariogramCallback(
                    **kwargs.pop("callback", {})
                )
                loss = gv.losses.SemivariogramContrastiveLoss(**kwargs)
                method = (loss, [callback])
            model, _, seconds, _ = experiment.train(
                method, fit, seed, args.epochs, verbose=0
            )
            model.set_gallery(gallery, verbose=0)
            coords, _ = model.predict_gps(val["image"], top_k=1)
            d = np.asarray(gv.geo.haversine_km(coords[:, 0], val["gps"]))
            acc[name, seed] = [100 * np.mean(d <= t) for t in THRESHOLDS]
            acc[name, seed].append(np.median(d))
            print(
                f"seed {seed} {name}: "
                + " ".join(f"{a:.1f}" for a in acc[name, seed])
                + f" ({seconds:.0f} s)",
                flush=True,
            )

    base = "plain GeoCLIP"
    print(
        "\n| loss | 25 km | 200 km | 750 km | 2500 km | median km "
        "| vs plain, paired: 25 / 200 / 750 / 2500 |"
        "\n|---|---|---|---|---|---|---|"
    )
    for name in [NN] + args.variants:
        rows = np.array([acc[name, s] for s in args.seeds])
        mean = rows.mean(0)
        paired = ""
        if base in args.variants and name not in (base, NN):
            base_rows = np.array([acc[base, s] for s in args.seeds])
            diff = (rows - base_rows)[:, :4].mean(0)
            paired = " / ".join(f"{x:+.1f}" for x in diff)
        print(
            f"| {name} | "
            + " | ".join(f"{a:.1f}" for a in mean[:4])
            + f" | {mean[4]:.0f} | {paired} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
