"""The stored-features pipeline at scale: rates and peak memory per phase.

On the backend of `KERAS_BACKEND`, for `--rows` synthetic feature rows
(`--dim`-d float16, coordinates uniform on the sphere, written as the
shards `gv.data.features.extract_features` writes), each phase timed and
its peak host memory (VmHWM, reset per phase) measured:

- **build**: the shards into the `geotagged_features` tfds data set;
- **stream**: one epoch of `gv.data.streams.epoch_stream` alone (batch
  `--batch`, shuffle buffer `--buffer`): the input pipeline's rows/s;
- **train**: one epoch of `gv.training.fit_resumable` (semivariogram loss
  and callback, checkpoints `--checkpoints` times) with the model of the
  scale issue's measurement (128-d embeddings, 256-unit MLPs, queue 4096);
- **reference**: `gv.evaluation.set_reference_from_features` over every
  row (the reference embeddings are model state: `emb_mib` below);
- **predict**: `--queries` queries per retrieval mode, 100 K gallery.
- **evaluate**: `gv.evaluation.evaluate_features` over every training row
  (gallery mode, 10 K gallery, 8,192 queries a block), without and with
  `backup_dir` (each finished block's predictions written), alternating,
  twice each: the backup's cost.

Each phase runs in its own process (`--phase`; the build runs first in
each, from the tfds cache after the first time), so its peak memory is its
own: `KERAS_BACKEND=jax python benchmarks/features_pipeline.py --rows
100000 --work /tmp/fp100k --phase stream` (then `train`, `reference`,
`predict`; "predict" sets the reference first), and `--rows 1000000`.
`--extract N` instead times `extract_features` over a generated corpus of
`N` photos with a tiny random CLIP (decoding, CLIP preprocessing and shard
writing: the pipeline's cost besides the backbone). `--references N
--reference-dtype float16` instead times prediction in every mode against
`N` synthetic reference embeddings stored as float16 (or float32,
bfloat16), set directly, with their peak memory.
Results: BENCHMARKS.md.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import harness
import numpy as np

import geovario_keras as gv
from geovario_keras.data import features as features_lib
from geovario_keras.testing.synthetic_features import write_synthetic_features


def phase(name, results, fn):
    harness.reset_peak_memory()
    start = time.time()
    value = fn()
    seconds = time.time() - start
    results[name] = {
        "seconds": seconds,
        "peak_rss_mib": harness.peak_memory_mib()["host_rss"],
        **(value or {}),
    }
    print(f"{name}: {json.dumps(results[name])}", flush=True)
    return value


def uniform_gps(rng, n):
    """`n` points uniform on the sphere, (lat, lon) float32."""
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return np.stack([lat, rng.uniform(-180, 180, n)], 1).astype("float32")


def model_for(dim, reference_dtype="float32"):
    import keras

    keras.utils.set_random_seed(0)
    model = gv.GeoCLIP(
        gv.layers.ImageEncoder(None, embed_dim=128, hidden_units=256),
        gv.layers.LocationEncoder(
            num_features=128, hidden_units=256, hidden_layers=2, embed_dim=128
        ),
        queue_size=4096,
        seed=0,
        reference_dtype=reference_dtype,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=gv.losses.SemivariogramContrastiveLoss(),
    )
    model.build((None, dim))
    return model


PHASES = (
    "build",
    "stream",
    "train",
    "reference",
    "predict",
    "evaluate",
    "grain",
)


def run_phase(args, work):
    """One phase of `PHASES` on the data in `work` (written on first use),
    in this process: its peak memory is its own."""
    results = {"rows": args.rows, "dim": args.dim, "phase": args.phase}
    folder = os.path.join(work, "features")
    if not os.path.isfile(os.path.join(folder, features_lib.MANIFEST)):
        write_synthetic_features(folder, args.rows, args.dim)
    built = {}

    def build():
        built["builder"] = gv.data.geotagged_features(
            folder,
            data_dir=os.path.join(work, "tfds"),
            verbose=False,
            num_shards=args.files,
        )
        return {"rows_per_s": args.rows}

    phase("build", results, build)
    results["build"]["rows_per_s"] /= results["build"]["seconds"]
    if args.phase == "build":
        return results
    builder = built["builder"]
    return PHASE_FUNCTIONS[args.phase](args, work, builder, results)


def stream_phase(args, work, builder, results):
    def stream():
        n, first = 0, None
        ds = gv.data.streams.epoch_stream(
            builder, "train", args.batch, shuffle_buffer=args.buffer
        )
        for x, _ in ds.as_numpy_iterator():
            if first is None:  # after the shuffle buffer has filled
                first = time.time()
            else:
                n += len(x)
        return {"rows_per_s": n / (time.time() - first), "rows_read": n}

    phase("stream", results, stream)
    return results


def train_phase(args, work, builder, results):
    model = model_for(args.dim)

    def train():
        history = gv.training.fit_resumable(
            model,
            builder,
            os.path.join(work, "checkpoints"),
            epochs=1,
            batch_size=args.batch,
            checkpoints_per_epoch=args.checkpoints,
            shuffle_buffer=args.buffer,
            callbacks=[gv.training.semivariogram_callback(args.checkpoints)],
            verbose=0,
        )
        steps, _ = gv.data.streams.schedule(
            builder, "train", args.batch, args.checkpoints
        )
        return {
            "rows_per_s": steps * args.batch,
            "loss": history.history["loss"][-1],
        }

    phase("train", results, train)
    results["train"]["rows_per_s"] /= results["train"]["seconds"]
    shutil.rmtree(os.path.join(work, "checkpoints"), ignore_errors=True)
    return results


def reference_phase(args, work, builder, results, model=None):
    model = model or model_for(args.dim)

    def reference():
        n = gv.evaluation.set_reference_from_features(model, builder, verbose=0)
        return {"rows_per_s": n, "emb_mib": n * 128 * 4 / 2**20}

    phase("reference", results, reference)
    results["reference"]["rows_per_s"] /= results["reference"]["seconds"]
    return results


def predict_phase(args, work, builder, results, model=None):
    if model is None:
        model = model_for(args.dim)
        reference_phase(args, work, builder, results, model)
    rng = np.random.default_rng(1)
    gallery = uniform_gps(rng, 100_000)
    model.set_gallery(gallery, verbose=0)
    queries = rng.standard_normal((args.queries, args.dim)).astype("float32")
    for mode in ("gallery", "reference", "hybrid"):
        model.predict_gps(queries[:64], top_k=1, mode=mode)  # compile

        def predict(mode=mode):
            model.predict_gps(queries, top_k=1, mode=mode)
            return {"queries_per_s": args.queries}

        phase(f"predict_{mode}", results, predict)
        key = f"predict_{mode}"
        results[key]["queries_per_s"] /= results[key]["seconds"]
    return results


def evaluate_phase(args, work, builder, results):
    model = model_for(args.dim)
    rng = np.random.default_rng(1)
    gallery = uniform_gps(rng, 10_000)
    model.set_gallery(gallery, verbose=0)
    backup = os.path.join(work, "evaluation")
    for run in range(2):
        for kept in (False, True):

            def evaluate(kept=kept):
                _, pred = gv.evaluation.evaluate_features(
                    model,
                    builder,
                    "train",
                    "gallery",
                    admin_levels=False,
                    verbose=0,
                    backup_dir=backup if kept else None,
                )
                return {"queries_per_s": len(pred)}

            key = f"evaluate_{'backup' if kept else 'plain'}_{run}"
            phase(key, results, evaluate)
            results[key]["queries_per_s"] /= results[key]["seconds"]
    best = {
        kind: min(results[f"evaluate_{kind}_{r}"]["seconds"] for r in range(2))
        for kind in ("plain", "backup")
    }
    results["evaluate_backup_cost"] = best["backup"] / best["plain"] - 1.0
    print(f"backup cost: {100 * results['evaluate_backup_cost']:+.1f} %")
    return results


def grain_phase(args, work, builder, results):
    """The same epoch read by `grain` (JAX's data loader), for comparison
    with `stream`: the split's TFRecord files copied once into ArrayRecord
    files (grain reads random-access files), then a global shuffle, batches
    of `--batch` serialized examples, and the same vectorised parse and
    decode per batch as `gv.data.streams`; `--grain-threads` reading
    threads. Needs `grain` and `array-record` (not dependencies)."""
    import grain
    import tensorflow as tf
    from array_record.python import array_record_module

    from geovario_keras.data import streams

    folder = os.path.join(work, "array_record")
    names = builder.info.splits["train"].filenames
    paths = [os.path.join(folder, f"{n}.array_record") for n in names]
    if not all(os.path.exists(p) for p in paths):
        os.makedirs(folder, exist_ok=True)
        for name, path in zip(names, paths):
            writer = array_record_module.ArrayRecordWriter(
                path + ".tmp", "group_size:1"
            )
            for record in tf.data.TFRecordDataset(
                os.path.join(builder.data_dir, name)
            ).as_numpy_iterator():
                writer.write(record)
            writer.close()
            os.replace(path + ".tmp", path)
    parse = streams._parser(builder)

    def read():
        source = grain.sources.ArrayRecordDataSource(paths)
        ds = (
            grain.MapDataset.source(source)
            .shuffle(seed=0)
            .batch(args.batch, drop_remainder=True)
            .map(lambda b: tuple(t.numpy() for t in parse(b)))
        )
        it = ds.to_iter_dataset(
            grain.ReadOptions(
                num_threads=args.grain_threads, prefetch_buffer_size=8
            )
        )
        n, first = 0, None
        for x, _ in it:
            if first is None:
                first = time.time()
            else:
                n += len(x)
        return {"rows_per_s": n / (time.time() - first), "rows_read": n}

    phase("grain", results, read)
    return results


PHASE_FUNCTIONS = {
    "grain": grain_phase,
    "stream": stream_phase,
    "train": train_phase,
    "reference": reference_phase,
    "predict": predict_phase,
    "evaluate": evaluate_phase,
}


def run_references(args, work):
    """Prediction against `--references` synthetic reference embeddings
    (unit vectors, stored as `--reference-dtype`), set directly: the
    search's cost depends on the set's size, not on its content."""
    model = model_for(args.dim, args.reference_dtype)
    n = args.references
    results = {"references": n, "reference_dtype": args.reference_dtype}

    def reference():
        rng = np.random.default_rng(0)
        storage = "float32" if args.reference_dtype == "float32" else "float16"
        emb = np.empty((n, 128), storage)
        for i in range(0, n, 1 << 18):
            part = rng.standard_normal((min(1 << 18, n - i), 128))
            emb[i : i + len(part)] = part / np.linalg.norm(
                part, axis=1, keepdims=True
            )
        gps = uniform_gps(rng, n)
        model.reference.set(gps, emb, copy=False)
        return {"emb_mib": emb.nbytes / 2**20}

    phase("reference", results, reference)
    return predict_phase(args, work, None, results, model)


def run_extract(args, work):
    from geovario_keras.data.corpus_reader import CorpusReader
    from geovario_keras.testing.tiny_clip import write_tiny_clip

    corpus = gv.data.write_blue_marble_corpus(
        os.path.join(work, "corpus"), args.extract, 10, image_size=256
    )
    write_tiny_clip(os.path.join(work, "clip"), image_size=224, patch_size=32)
    clip = gv.pretrained.clip_image_backbone(os.path.join(work, "clip"))
    results = {"photos": args.extract}

    def extract():
        features_lib.extract_features(
            CorpusReader("osv5m", corpus),
            clip,
            os.path.join(work, "features"),
            splits=["train"],
            batch_size=64,
            verbose=0,
        )
        return {}

    phase("extract", results, extract)
    results["extract"]["photos_per_s"] = (
        args.extract / results["extract"]["seconds"]
    )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--buffer", type=int, default=16384)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument(
        "--files", type=int, default=None, help="files per split (tfds)"
    )
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--phase", choices=PHASES, default="stream")
    parser.add_argument("--grain-threads", type=int, default=2)
    parser.add_argument("--extract", type=int, default=0)
    parser.add_argument(
        "--references",
        type=int,
        default=0,
        help="instead: prediction against this many synthetic references",
    )
    parser.add_argument(
        "--reference-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
    )
    parser.add_argument("--work", default=None, help="kept when given")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="features_pipeline_")
    try:
        run = run_phase
        if args.extract:
            run = run_extract
        elif args.references:
            run = run_references
        results = run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = harness.machine()
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
