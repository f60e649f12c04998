"""How the defaults of `gv.retrieval.RetrievalOptions` were chosen.

On a validation split of the default Blue Marble *training* set (the test
split is never read): 1,200 training places are held out as queries, and
the training places at least 25 km from every one of them (the test split's
own rule) are the model's training data and the reference set. Plain
GeoCLIP (or, `--method semivariogram`, the semivariogram loss) is trained
on those (the demo's recipe), then `"gallery"`,
`"reference"` and `"hybrid"` prediction are scored on the held-out queries
for a grid of `bandwidth_km`, `gallery_candidates` and `mean_shift_steps`
(the `floor`, 0.01, was chosen by the earlier grid over 0.001-0.1 with the
Laplacian kernel, in BENCHMARKS.md), and of the hybrid's `location_weight`
(`--grid location_weight`). `--grid reference_dtype`: the accuracy cost of
storing the reference embeddings in float16 or bfloat16
(`GeoCLIP(reference_dtype=...)`) against float32, same model and queries.

Run: `KERAS_BACKEND=jax python benchmarks/studies/retrieval_options.py
[--seed 0] [--epochs 8] [--grid all|candidates|location_weight|
reference_dtype]`. The results
are in BENCHMARKS.md.
"""

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "..", "recipes")
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=1200)
    parser.add_argument(
        "--location-weights",
        type=float,
        nargs="+",
        default=[1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.0],
        help="the hybrid's location_weight values of --grid location_weight",
    )
    parser.add_argument(
        "--method", choices=("geoclip", "semivariogram"), default="geoclip"
    )
    parser.add_argument(
        "--grid",
        choices=("all", "candidates", "location_weight", "reference_dtype"),
        default="all",
        help="candidates: bandwidth x mean-shift steps x gallery "
        "candidates; location_weight: the hybrid's location_weight x "
        "bandwidth (other options at their defaults); reference_dtype: "
        "the reference embeddings stored in float32, float16, bfloat16",
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
    model, _, seconds, _ = experiment.train(
        args.method, fit, args.seed, args.epochs, verbose=0
    )
    print(f"trained in {seconds:.0f} s")
    model.set_gallery(experiment.gallery_for(val["gps"]), verbose=0)
    model.set_reference(fit["image"], fit["gps"], verbose=0)

    def score(mode, **options):
        coords, _ = model.predict_gps(
            val["image"], top_k=1, mode=mode, **options
        )
        d = np.asarray(gv.geo.haversine_km(coords[:, 0], val["gps"]))
        return [100 * np.mean(d <= t) for t in (25, 200, 750, 2500)]

    if args.grid == "reference_dtype":
        reference_dtype_grid(model, fit, val)
        return
    base = score("gallery")
    print("gallery: " + " / ".join(f"{a:.1f}" for a in base), flush=True)
    if args.grid in ("all", "candidates"):
        candidates_grid(score)
    if args.grid in ("all", "location_weight"):
        location_weight_grid(score, args.location_weights)


def reference_dtype_grid(model, fit, val):
    """ "reference" and "hybrid" with the reference set stored in float32,
    float16 and bfloat16: accuracy, the share of queries whose top-1 lies
    within 1 km of float32's (a mode found by mean shift moves a little
    with the neighbours' weights), and the share whose 16 neighbours are
    float32's."""
    import geovario_keras as gv
    from geovario_keras import retrieval

    options = retrieval.RetrievalOptions()
    queries = model.encode_image(val["image"], verbose=0)
    refs = model.encode_image(fit["image"], verbose=0)
    scale = float(np.asarray(model.temperature()))
    print(
        "\n| storage | mode | 1 | 25 | 200 | 750 | 2500 | top-1 within 1 km "
        "of float32's % | same 16 neighbours % |"
        "\n|---|---|---|---|---|---|---|---|---|"
    )
    base = {}
    for dtype in ("float32", "float16", "bfloat16"):
        reference = gv.layers.ReferenceSet(
            embed_dim=refs.shape[1], embeddings_dtype=dtype
        )
        reference.set(fit["gps"], refs)
        _, index, _ = reference.search(queries, scale, options.neighbours)
        for mode in ("reference", "hybrid"):
            if mode == "reference":
                coords, _ = retrieval.predict_from_reference(
                    reference, queries, scale, 1, options
                )
            else:
                coords, _ = retrieval.predict_hybrid(
                    model.gallery,
                    reference,
                    model.encode_location,
                    queries,
                    scale,
                    1,
                    options,
                )
            d = np.asarray(gv.geo.haversine_km(coords[:, 0], val["gps"]))
            acc = [100 * np.mean(d <= t) for t in (1, 25, 200, 750, 2500)]
            base.setdefault(mode, (coords, index))
            shift = np.asarray(
                gv.geo.haversine_km(coords[:, 0], base[mode][0][:, 0])
            )
            same = 100 * np.mean(shift <= 1.0)
            same_nn = 100 * np.mean(
                np.all(np.sort(index, 1) == np.sort(base[mode][1], 1), 1)
            )
            _row([dtype, mode], acc + [same, same_nn])


def _row(cells, acc):
    print(
        "| "
        + " | ".join(cells)
        + " | "
        + " | ".join(f"{a:.1f}" for a in acc)
        + " |",
        flush=True,
    )


def location_weight_grid(score, weights):
    """The hybrid's `location_weight` for two bandwidths."""
    print(
        "\n| mode | bandwidth km | location weight | 25 | 200 | 750 | 2500 |"
        "\n|---|---|---|---|---|---|---|"
    )
    for bandwidth in (75.0, 100.0):
        acc = score("reference", bandwidth_km=bandwidth)
        _row(["reference", f"{bandwidth:g}", ""], acc)
        for weight in weights:
            acc = score(
                "hybrid", bandwidth_km=bandwidth, location_weight=weight
            )
            _row(["hybrid", f"{bandwidth:g}", f"{weight:g}"], acc)


def candidates_grid(score):
    """Bandwidth x mean-shift steps x gallery candidates."""
    print(
        "\n| mode | bandwidth km | mean-shift steps | gallery candidates "
        "| 25 | 200 | 750 | 2500 |\n|---|---|---|---|---|---|---|---|"
    )
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
