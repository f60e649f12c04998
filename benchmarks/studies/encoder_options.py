"""How the demo's spherical-harmonic encoder settings were chosen.

On the validation split of the default Blue Marble *training* set that
`retrieval_options.py` uses (the test split is never read): 1,200 training
places held out as queries, the training places at least 25 km from all of
them as training data. Plain GeoCLIP (the demo's recipe and budget) is
trained with GeoCLIP's Fourier encoder and with
`SphericalHarmonicsLocationEncoder` variants of the same width, depth and
output size (degree `L`, first-layer frequency `w0_initial`), and scored
with gallery prediction on the held-out queries.

Run: `KERAS_BACKEND=jax python benchmarks/studies/encoder_options.py [--seed 0]
[--epochs 8]`. The result is in BENCHMARKS.md.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "..", "recipes")
)

VARIANTS = {  # name: (degree, w0_initial)
    "L10 w0=30": (10, 30.0),
    "L20 w0=30": (20, 30.0),
    "L40 w0=30": (40, 30.0),
    "L10 w0=1": (10, 1.0),
    "L20 w0=1": (20, 1.0),
    "L40 w0=1": (40, 1.0),
    "L15 w0=30": (15, 30.0),
    "L30 w0=30": (30, 30.0),
    "L20 w0=10": (20, 10.0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=1200)
    parser.add_argument(
        "--variants", nargs="+", default=["fourier"] + list(VARIANTS)
    )
    parser.add_argument(
        "--data-dir", default=os.path.join("artifacts", "tensorflow_datasets")
    )
    args = parser.parse_args()

    import experiment

    import geovario_keras as gv

    fit, val = experiment.validation_split(
        args.data_dir, args.num_val, args.seed
    )
    gallery = experiment.gallery_for(val["gps"])
    print(
        "| encoder | 25 km | 200 km | 750 km | 2500 km | median km | train s "
        "|\n|---|---|---|---|---|---|---|"
    )
    for name in args.variants:
        if name == "fourier":
            encoder = "fourier"
        else:
            degree, w0_initial = VARIANTS[name]
            encoder = gv.layers.SphericalHarmonicsLocationEncoder(
                degree=degree,
                w0_initial=w0_initial,
                hidden_units=256,
                hidden_layers=2,
                embed_dim=128,
            )
        model, _, seconds, _ = experiment.train(
            "geoclip", fit, args.seed, args.epochs, verbose=0, encoder=encoder
        )
        model.set_gallery(gallery, verbose=0)
        coords, _ = model.predict_gps(val["image"], top_k=1)
        d = np.asarray(gv.geo.haversine_km(coords[:, 0], val["gps"]))
        acc = [100 * np.mean(d <= t) for t in (25, 200, 750, 2500)]
        print(
            f"| {name} | "
            + " | ".join(f"{a:.1f}" for a in acc)
            + f" | {np.median(d):.0f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
