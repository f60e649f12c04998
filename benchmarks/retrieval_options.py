"""How the defaults of `gv.retrieval.RetrievalOptions` were chosen.

On a validation split of the default Blue Marble *training* set (the test
split is never read): 1,200 training places are held out as queries, and
the training places at least 25 km from every one of them (the test split's
own rule) are the model's training data and the reference set. Plain
GeoCLIP is trained on those (the demo's recipe), then `"gallery"`,
`"reference"` and `"hybrid"` prediction are scored on the held-out queries
for a grid of `bandwidth_km`, `gallery_candidates` and `mean_shift_steps`
(the `floor`, 0.01, was chosen by the earlier grid over 0.001-0.1 with the
Laplacian kernel, in BENCHMARKS.md).

Run: `KERAS_BACKEND=jax python benchmarks/retrieval_options.py [--seed 0]
[--epochs 8]`. The result is in BENCHMARKS.md.
"""

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "recipes"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=1200)
    parser.add_argument(
        "--data-dir", default=os.path.join("artifacts", "tensorflow_datasets")
    )
    args = parser.parse_args()

    import common

    import geovario_keras as gv

    fit, val = common.validation_split(args.data_dir, args.num_val, args.seed)
    model, _, seconds, _ = common.train(
        "geoclip", fit, args.seed, args.epochs, verbose=0
    )
    print(f"trained in {seconds:.0f} s")
    model.set_gallery(common.gallery_for(val["gps"]), verbose=0)
    model.set_reference(fit["image"], fit["gps"], verbose=0)

    def score(mode, **options):
        coords, _ = model.predict_gps(
            val["image"], top_k=1, mode=mode, **options
        )
        d = np.asarray(gv.geo.haversine_km(coords[:, 0], val["gps"]))
        return [100 * np.mean(d <= t) for t in (25, 200, 750, 2500)]

    print(
        "| mode | bandwidth km | mean-shift steps | gallery candidates "
        "| 25 | 200 | 750 | 2500 |\n|---|---|---|---|---|---|---|---|"
    )
    base = score("gallery")
    print("| gallery | | | | " + " | ".join(f"{a:.1f}" for a in base) + " |")
    bandwidths = (50.0, 75.0, 100.0, 150.0)
    for bandwidth, steps in itertools.product(bandwidths, (0, 10)):
        acc = score("reference", bandwidth_km=bandwidth, mean_shift_steps=steps)
        print(
            f"| reference | {bandwidth:g} | {steps} | | "
            + " | ".join(f"{a:.1f}" for a in acc)
            + " |"
        )
    grid = itertools.product(bandwidths, (0, 10), (32, 128))
    for bandwidth, steps, candidates in grid:
        acc = score(
            "hybrid",
            bandwidth_km=bandwidth,
            mean_shift_steps=steps,
            gallery_candidates=candidates,
        )
        print(
            f"| hybrid | {bandwidth:g} | {steps} | {candidates} | "
            + " | ".join(f"{a:.1f}" for a in acc)
            + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
