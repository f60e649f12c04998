"""The paper's experiment at any scale: corpus -> features -> train -> table.

For corpora of millions of photos (OSV5M: 4.9 M training photos; MP-16:
4.7 M), with bounded memory and every step resumable. Each step writes
into one run folder, skips work already done and never replaces a
finished output without `--overwrite`:

1. `features`: the frozen CLIP image tower runs once over the corpus
   (`gv.data.features.extract_features`, shards resumable after a kill),
   then the shards become a tfds data set (`gv.data.geotagged_features`).
2. `train --method geoclip|semivariogram`: GeoCLIP's heads over the stored
   features, streamed from disk (`gv.training.fit_resumable`: checkpoints
   several times per epoch, exact resumption), then `model.keras`.
3. `evaluate --method ...`: gallery, reference and hybrid prediction over
   the test split in blocks (`gv.evaluation`), OSV5M's metrics (accuracy
   at 1 / 25 / 200 / 750 / 2,500 km, GeoScore, country / region /
   sub-region / city), one JSON per mode, and `results.md` (every method).
   A killed evaluation continues after its last finished block
   (`evaluate_features(backup_dir=...)`, `evaluation-<mode>/` until the
   mode's JSON is written).
4. `export --method ...`: a TF SavedModel that takes features.

`all` runs every step for both methods. Commands (README, "The paper's
experiment"):

    python recipes/paper.py all --preset osv5m --corpus ~/osv5m \\
        --clip ~/clip-vit-l14 --run ~/runs/osv5m
    python recipes/paper.py all --preset mp16 --corpus ~/mp16 \\
        --test-preset im2gps3k --test-corpus ~/im2gps3k \\
        --clip ~/clip-vit-l14 --run ~/runs/mp16

For the small embedded data, `compare.py` is the demo; `finetune.py`
trains end to end from pixels on corpora that fit in memory.
"""

import argparse
import json
import os
import shutil
import sys
import time

import keras
import numpy as np

import geovario_keras as gv
from geovario_keras.saving import write_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment  # noqa: E402

METHODS = ("geoclip", "semivariogram")
MODES = ("gallery", "reference", "hybrid")
KEYS = (
    ("acc_1km", "1 km"),
    ("acc_25km", "25 km"),
    ("acc_200km", "200 km"),
    ("acc_750km", "750 km"),
    ("acc_2500km", "2500 km"),
    ("median_km", "median km"),
    ("geoscore", "GeoScore"),
    ("acc_country", "country"),
    ("acc_region", "region"),
    ("acc_sub_region", "sub-region"),
    ("acc_city", "city"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "step", choices=("features", "train", "evaluate", "export", "all")
    )
    parser.add_argument("--run", required=True, help="the run folder")
    parser.add_argument(
        "--preset", default="osv5m", choices=sorted(gv.data.PRESETS)
    )
    parser.add_argument("--corpus", help="the corpus folder (features)")
    parser.add_argument(
        "--test-preset",
        choices=sorted(gv.data.PRESETS),
        help="evaluate on another corpus (e.g. MP-16 -> im2gps3k)",
    )
    parser.add_argument("--test-corpus", help="that corpus's folder")
    parser.add_argument("--clip", help="CLIP checkpoint folder (features)")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--extract-batch", type=int, default=128)
    parser.add_argument(
        "--dtype", default="float16", choices=gv.data.features.DTYPES
    )
    parser.add_argument(
        "--method", nargs="+", default=list(METHODS), choices=METHODS
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--embed-dim", type=int, default=512)
    parser.add_argument(
        "--location-hidden",
        type=int,
        default=1024,
        help="units of the location MLPs (GeoCLIP: 1024)",
    )
    parser.add_argument("--location-layers", type=int, default=3)
    parser.add_argument("--location-features", type=int, default=256)
    parser.add_argument("--checkpoints-per-epoch", type=int, default=10)
    parser.add_argument("--shuffle-buffer", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument(
        "--gallery-size",
        type=int,
        default=100_000,
        help="gallery: this many training coordinates",
    )
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES
    )
    parser.add_argument(
        "--reference-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="storage of the reference embeddings (float16: half the memory)",
    )
    experiment.add_jit_compile_argument(parser)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--verbose", type=int, default=1)
    return parser.parse_args(argv)


def features_builder(args, preset, corpus, name="features"):
    """Step 1: the features folder (resumable), then its tfds data set."""
    folder = os.path.join(args.run, name)
    manifest = gv.data.features.read_manifest(folder)
    if manifest is None or not manifest.get("complete") or args.overwrite:
        if not (corpus and args.clip):
            raise SystemExit("`features` needs the corpus and --clip.")
        reader = gv.data.corpus_reader.CorpusReader(preset, corpus)
        backbone = gv.pretrained.clip_image_backbone(args.clip)
        gv.data.features.extract_features(
            reader,
            backbone,
            folder,
            shard_size=args.shard_size,
            batch_size=args.extract_batch,
            dtype=args.dtype,
            overwrite=args.overwrite,
            verbose=args.verbose,
        )
    return gv.data.geotagged_features(
        folder, data_dir=os.path.join(args.run, "tfds"), verbose=True
    )


def make_model(args, builder, method):
    """GeoCLIP's heads over the stored features, compiled for `method`."""
    feature_dim = builder.info.features["features"].shape[0]
    keras.utils.set_random_seed(args.seed)
    model = gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            None, embed_dim=args.embed_dim, hidden_units=feature_dim
        ),
        location_encoder=gv.layers.LocationEncoder(
            num_features=args.location_features,
            hidden_units=args.location_hidden,
            hidden_layers=args.location_layers,
            embed_dim=args.embed_dim,
            seed=args.seed,
        ),
        queue_size=args.queue_size,
        seed=args.seed,
    )
    loss = (
        gv.losses.SemivariogramContrastiveLoss()
        if method == "semivariogram"
        else gv.losses.GeoContrastiveLoss()
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=loss,
        jit_compile=experiment.JIT_COMPILE[args.jit_compile],
    )
    model.build((None, feature_dim))
    return model


def train(args, builder, method):
    """Step 2: resumable streamed training; `model.keras` at the end."""
    folder = os.path.join(args.run, method)
    final = os.path.join(folder, "model.keras")
    if os.path.exists(final) and not args.overwrite:
        print(f"{final} exists: training of {method} is done (--overwrite).")
        return gv.load_model(final)
    model = make_model(args, builder, method)
    callbacks = []
    if method == "semivariogram":
        callbacks.append(
            gv.training.semivariogram_callback(
                args.checkpoints_per_epoch, verbose=args.verbose
            )
        )
    start = time.time()
    gv.training.fit_resumable(
        model,
        builder,
        os.path.join(folder, "checkpoints"),
        epochs=args.epochs,
        batch_size=args.batch_size,
        split=args.train_split,
        checkpoints_per_epoch=args.checkpoints_per_epoch,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        callbacks=callbacks,
        verbose=2 if args.verbose else 0,
    )
    print(f"trained {method} in {time.time() - start:.0f} s (this run)")
    model.save(final, overwrite=args.overwrite)
    return model


def gallery(args, builder):
    """Up to `--gallery-size` training coordinates (seeded draw)."""
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=args.train_split, shuffle_files=False)
    gps = np.concatenate(
        [
            b["gps"]
            for b in tfds.as_numpy(
                ds.map(lambda e: {"gps": e["gps"]}).batch(65536)
            )
        ]
    )
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(gps), min(args.gallery_size, len(gps)), False)
    return gps[np.sort(pick)]


def evaluate(args, builder, test_builder, method, model):
    """Step 3: one JSON report per mode; done modes are skipped."""
    folder = os.path.join(args.run, method)
    reports, todo = {}, []
    for mode in args.modes:
        path = os.path.join(folder, f"results-{mode}.json")
        if os.path.exists(path) and not args.overwrite:
            with open(path) as f:
                reports[mode] = json.load(f)
        else:
            todo.append(mode)
    if not todo:
        return reports
    model.set_gallery(gallery(args, builder), verbose=0)
    if set(todo) & {"reference", "hybrid"}:
        gv.evaluation.set_reference_from_features(
            model,
            builder,
            args.train_split,
            verbose=args.verbose,
            dtype=args.reference_dtype,
        )
    for mode in todo:
        start = time.time()
        # Finished blocks' predictions, kept until the report is written: a
        # killed evaluation continues after them.
        backup = os.path.join(folder, f"evaluation-{mode}")
        if args.overwrite and os.path.isdir(backup):
            shutil.rmtree(backup)
        report, _ = gv.evaluation.evaluate_features(
            model,
            test_builder,
            args.test_split,
            mode,
            verbose=args.verbose,
            backup_dir=backup,
        )
        report["seconds"] = time.time() - start
        write_json(os.path.join(folder, f"results-{mode}.json"), report)
        reports[mode] = report
        print(
            f"{method} {mode}: "
            + ", ".join(
                f"{label} {report[key]:.1f}"
                for key, label in KEYS
                if key in report
            )
        )
    return reports


def export(args, builder, method, model):
    """Step 4: a SavedModel over features (skipped when it exists), with
    the gallery of `evaluate` (set here when this step runs alone)."""
    path = os.path.join(args.run, method, "saved_model")
    if os.path.exists(path) and not args.overwrite:
        print(f"{path} exists (--overwrite to replace it).")
        return path
    if model.gallery.size == 0:
        model.set_gallery(gallery(args, builder), verbose=0)
    return gv.export.export_saved_model(model, path, top_k=5)


def table(results):
    """Markdown: one row per method and mode."""
    lines = [
        "| method | mode | " + " | ".join(label for _, label in KEYS) + " |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for (method, mode), r in results.items():
        cells = [
            "n/a"
            if np.isnan(r[k])
            else f"{r[k]:.0f}"
            if k in ("median_km", "geoscore")
            else f"{r[k]:.1f}"
            for k, _ in KEYS
        ]
        lines.append(f"| {method} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.run, exist_ok=True)
    print(
        f"backend: {keras.backend.backend()} | geovario-keras "
        f"{gv.__version__} | run {args.run}"
    )
    builder = features_builder(args, args.preset, args.corpus)
    test_builder = builder
    if args.test_preset:
        test_builder = features_builder(
            args, args.test_preset, args.test_corpus, "test-features"
        )
    if args.step == "features":
        return
    results = {}
    for method in args.method:
        model = train(args, builder, method)
        if args.step == "train":
            continue
        if args.step in ("evaluate", "all"):
            reports = evaluate(args, builder, test_builder, method, model)
            for mode, r in reports.items():
                results[(method, mode)] = r
        if args.step in ("export", "all"):
            print(f"exported {export(args, builder, method, model)}")
    if results:
        text = table(results)
        path = os.path.join(args.run, "results.md")
        with open(path + ".tmp", "w") as f:  # then renamed: whole or absent
            f.write(text + "\n")
        os.replace(path + ".tmp", path)
        print("\n" + text)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
