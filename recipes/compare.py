"""# GeoCLIP vs the semivariogram loss on real imagery, with ablations

The main job (`make demo`). On the embedded Blue Marble data set, the same
model is trained with the same budget under several losses, for several
seeds (the first four by default; `--methods` picks):

| method | loss |
|---|---|
| geoclip | plain InfoNCE (GeoCLIP) |
| semivariogram | `SemivariogramContrastiveLoss` + `SemivariogramCallback` |
| sv_false_only | the same, false-negative down-weighting only |
| sv_hard_only | the same, hard-negative up-weighting only |
| robinson | similarity-weighted hard negatives, no variogram [1] |

It also scores two baselines that need no training: always answering the
training medoid, and 1-nearest-neighbour retrieval on raw pixels (the
location of the most similar training patch; Hays & Efros' Im2GPS). Plain
GeoCLIP and the semivariogram loss are also scored with retrieval-augmented
prediction (`predict_gps(mode="reference" | "hybrid")`, the training set as
reference). It prints mean ± std tables (Markdown), paired per-seed
differences, and writes them with plots (metrics, the fitted variogram, a
world map of errors) to `--out`. A second, smaller table repeats plain
GeoCLIP and the semivariogram loss on the `blocks` split (spatial
generalisation). The first semivariogram model is exported for TF Serving
(`saved_models/blue_marble/<version>/`).

[1] Robinson et al., "Contrastive Learning with Hard Negative Samples",
ICLR 2021 (`gv.losses.HardNegativeContrastiveLoss`, beta = 1).

The semivariogram losses use a false-negative range of 250 km
(`--false-range-km`; `fitted` for the package default, the fitted effective
range), chosen on validation splits of the training set (BENCHMARKS.md).

Run: `make demo`, or `python recipes/compare.py [--full] [--seeds 0 1 2]
[--epochs N] [--false-range-km 250]`. Backend: `KERAS_BACKEND` (`make
demo` uses jax).
"""

import argparse
import json
import os
import sys
import time

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines  # noqa: E402
import experiment  # noqa: E402
import reporting  # noqa: E402

import geovario_keras as gv  # noqa: E402

sys.stdout.reconfigure(line_buffering=True)  # progress shows in logs too

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--full", action="store_true", help="full-size run")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--epochs", type=int, default=None)
parser.add_argument(
    "--methods",
    nargs="+",
    default=list(experiment.DEMO_METHODS),
    choices=experiment.METHODS,
    help="losses to train (default: %(default)s; 'robinson' on request)",
)
parser.add_argument(
    "--encoders",
    nargs="+",
    default=["fourier"],
    choices=experiment.ENCODERS,
    help="location encoders: every one besides 'fourier' (GeoCLIP's, used by "
    "all methods) is trained with the plain and the semivariogram loss",
)
parser.add_argument(
    "--false-range-km",
    type=experiment.false_range_km,
    default=experiment.DEMO_FALSE_RANGE_KM,
    help="false-negative range of the semivariogram losses, km, or 'fitted' "
    "(the fitted effective range, the package default); default: "
    "%(default)s, chosen on validation (BENCHMARKS.md)",
)
parser.add_argument("--data-dir", default=experiment.DEFAULT_DATA_DIR)
parser.add_argument(
    "--num-places", type=int, default=None, help="smaller data (smoke runs)"
)
parser.add_argument("--out", default=os.path.join("artifacts", "compare"))
parser.add_argument(
    "--blocks-seeds",
    type=int,
    nargs="*",
    default=[0],
    help="seeds of the block-split table (none: skip it)",
)
parser.add_argument(
    "--export",
    default=os.path.join("saved_models", "blue_marble"),
    help="SavedModel base folder ('' to skip the export)",
)
experiment.add_jit_compile_argument(parser)
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
gallery = experiment.gallery_for(test["gps"])
print(
    f"train {len(train['gps'])}, test {len(test['gps'])} "
    f"(>= {meta['min_train_test_distance_km']:.0f} km from train), patches "
    f"{meta['patch_size']} px at {meta['spacing_km']:.2f} km/px, gallery "
    f"{len(gallery)} GeoNames places"
)

# ## 2. Baselines that need no training
results = {
    "constant": [baselines.constant_baseline(train, test)],
    "nearest_neighbour": [baselines.nearest_neighbour_baseline(train, test)[0]],
}

# ## 3. The losses, same model and budget, several seeds; plain
# GeoCLIP and the semivariogram loss also predict with the training set as
# reference (neighbour voting, and the hybrid of gallery and neighbours)
AUGMENTED = ("geoclip", "semivariogram")
OTHER_ENCODERS = [e for e in args.encoders if e != "fourier"]
first_sv = None
for seed in args.seeds:
    for method in args.methods:
        model, history, seconds, callbacks = experiment.train(
            method,
            train,
            seed,
            EPOCHS,
            verbose=0,
            false_range_km=args.false_range_km,
            jit_compile=args.jit_compile,
        )
        report, coords, _ = experiment.evaluate(model, test, gallery)
        report["train_s"] = seconds
        if callbacks:
            fit = callbacks[0].last_fit
            report["variogram_range_km"] = fit.effective_range_km
            for key in ("false_negative_frac", "hard_negative_frac"):
                report[key] = history.history[key][-1]
        results.setdefault(method, []).append(report)
        line = f"seed {seed} {method:>14}: " + reporting.summary(report)
        if method in AUGMENTED:
            model.set_reference(train["image"], train["gps"], verbose=0)
            for mode in ("reference", "hybrid"):
                r, _, _ = experiment.evaluate(model, test, mode=mode)
                results.setdefault(f"{method}/{mode}", []).append(r)
                line += f" | {mode} acc@25 {r['acc_25km']:.1f}"
        print(line + f" ({seconds:.0f} s)")
        if method == "semivariogram" and first_sv is None:
            first_sv = (model, callbacks[0], coords)
    # Other location encoders: same image tower, data, budget and seed.
    for encoder in OTHER_ENCODERS:
        for method in AUGMENTED:
            model, history, seconds, _ = experiment.train(
                method,
                train,
                seed,
                EPOCHS,
                verbose=0,
                encoder=encoder,
                false_range_km=args.false_range_km,
                jit_compile=args.jit_compile,
            )
            report, _, _ = experiment.evaluate(model, test, gallery)
            report["train_s"] = seconds
            results.setdefault(f"{method}@{encoder}", []).append(report)
            print(
                f"seed {seed} {method}@{encoder}: "
                + reporting.summary(report)
                + f" ({seconds:.0f} s)"
            )

# ## 4. The tables
KEYS = [
    ("acc_25km", "25 km"),
    ("acc_200km", "200 km"),
    ("acc_750km", "750 km"),
    ("acc_2500km", "2500 km"),
    ("median_km", "median km"),
    ("geoscore", "GeoScore"),
    ("acc_country", "country"),
    ("acc_region", "region"),
]
NAMES = dict(experiment.METHODS)
NAMES["nearest_neighbour"] = "1-NN raw pixels (no training)"
NAMES["constant"] = "constant: the train medoid"
for method in AUGMENTED:
    for mode in ("reference", "hybrid"):
        NAMES[f"{method}/{mode}"] = f"{NAMES[method]}, {mode} prediction"
    for encoder in experiment.ENCODERS:
        NAMES[f"{method}@{encoder}"] = (
            f"{NAMES[method]}, location encoder: {experiment.ENCODERS[encoder]}"
        )
table = reporting.markdown_table(results, KEYS, NAMES)
setting = (
    f"Blue Marble `{builder.builder_config.name}`: {len(train['gps'])} train /"
    f" {len(test['gps'])} test patches of {meta['patch_size']} px at "
    f"{meta['spacing_km']:.2f} km/px, test >= "
    f"{meta['min_train_test_distance_km']:.0f} km from train (a training "
    f"patch shares on average {100 * meta['shared_ground_mean']:.0f} %, at "
    f"most {100 * meta['shared_ground_max']:.0f} %, of a test patch's "
    f"ground); {EPOCHS} epochs, batch 256, queue 1024, seeds {args.seeds}, "
    f"backend {keras.backend.backend()}. Accuracies in %, top-1; gallery: "
    f"{len(gallery)} GeoNames places; reference: the training patches; mean "
    "± std over seeds; semivariogram false-negative range: "
    + (
        "the fitted effective range"
        if args.false_range_km is None
        else f"{args.false_range_km:g} km"
    )
    + "."
)
# Seeds move every method a lot (the same seed gives the same
# initialisation and data order), so compare seed by seed.
paired = reporting.paired_lines(results, args.methods, NAMES)
print("\n" + table + "\n\n" + setting + "\n\n" + paired)

blocks_table = ""
if args.blocks_seeds:
    b_builder, b_train, b_test = experiment.load_blue_marble(
        data_dir=args.data_dir, config="blocks"
    )
    b_meta = dict(b_builder.info.metadata)
    b_gallery = experiment.gallery_for(b_test["gps"])
    b_results = {
        "constant": [baselines.constant_baseline(b_train, b_test)],
        "nearest_neighbour": [
            baselines.nearest_neighbour_baseline(b_train, b_test)[0]
        ],
    }
    for seed in args.blocks_seeds:
        for encoder in ["fourier"] + OTHER_ENCODERS:
            for method in AUGMENTED:
                model, _, _, _ = experiment.train(
                    method,
                    b_train,
                    seed,
                    EPOCHS,
                    verbose=0,
                    encoder=encoder,
                    false_range_km=args.false_range_km,
                )
                r, _, _ = experiment.evaluate(model, b_test, b_gallery)
                key = method if encoder == "fourier" else f"{method}@{encoder}"
                b_results.setdefault(key, []).append(r)
                print(f"blocks seed {seed} {key:>14}: " + reporting.summary(r))
    blocks_table = (
        reporting.markdown_table(b_results, KEYS, NAMES)
        + f"\n\nBlue Marble `blocks` (spatial generalisation): "
        f"{len(b_train['gps'])} train / {len(b_test['gps'])} test patches of "
        f"{b_meta['patch_size']} px at {b_meta['spacing_km']:.0f} km/px; "
        "test places in whole ~300 km blocks, >= "
        f"{b_meta['min_train_test_distance_km']:.0f} km from any training "
        f"place; seeds {args.blocks_seeds}; otherwise as above."
    )
    print("\n" + blocks_table)
with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table + "\n\n" + setting + "\n\n" + paired + "\n")
    if blocks_table:
        f.write("\n## Block split\n\n" + blocks_table + "\n")
with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"setting": setting, "results": results}, f, indent=1)

# ## 5. Plots: the metrics with their spread, and the fitted variogram
png = reporting.results_figure(
    results, NAMES, os.path.join(args.out, "results.png")
)
outputs = [os.path.join(args.out, "results.md"), png]
if first_sv is not None:
    model, callback, coords = first_sv
    errors = gv.geo.haversine_km(coords[:, 0], test["gps"])
    outputs.append(
        reporting.error_map(
            test["gps"],
            keras.ops.convert_to_numpy(errors),
            os.path.join(args.out, "error_map.png"),
            f"Semivariogram loss, seed {args.seeds[0]}: test errors "
            "(gallery prediction)",
        )
    )
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
