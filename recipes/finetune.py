"""# Fine-tune the released GeoCLIP on your own geotagged photos

For corpora that fit in memory (each split is read as 224 x 224 pixels,
150 KB a photo: up to some tens of thousands of photos). For millions of
photos (OSV5M, MP-16) use `recipes/paper.py`: CLIP runs once, its features
are stored and streamed, and every step resumes after a kill.

Your corpus on disk (a CSV of image ids and coordinates plus an image
folder, in the OSV5M layout or another `gv.data.PRESETS` layout) → CLIP
ViT-L/14 from a local folder (`gv.pretrained.clip_image_backbone`) → the
released GeoCLIP weights → score it → fine-tune with the semivariogram
loss, the backbone frozen (default) or its last `--unfreeze` blocks
trainable → score again (gallery and hybrid prediction) → save a `.keras`
file and a preset, and optionally a SavedModel for TF Serving.

Nothing is fetched at run time. Once, online:

```
pip download geoclip==1.3.0 --no-deps -d ~/geoclip     # make install does it
hf download openai/clip-vit-large-patch14 config.json \\
    preprocessor_config.json model.safetensors --local-dir ~/clip-vit-l14
```

Run (backend from `KERAS_BACKEND`):

```
python recipes/finetune.py --corpus my_photos --clip ~/clip-vit-l14 \\
    --wheel ~/geoclip/geoclip-1.3.0-py3-none-any.whl [--epochs 3] \\
    [--unfreeze 0] [--export exported]
```

`--make-corpus` first writes a small corpus of real images (Blue Marble
patches at GeoNames places, `gv.data.write_blue_marble_corpus`) into
`--corpus`, so the whole path can be tried offline.
"""

import argparse
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment  # noqa: E402
import reporting  # noqa: E402

import geovario_keras as gv  # noqa: E402

sys.stdout.reconfigure(line_buffering=True)  # progress shows in logs too

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WHEEL = os.environ.get(
    "GEOVARIO_GEOCLIP_WHEEL",
    os.path.join(ROOT, ".cache", "geoclip", "geoclip-1.3.0-py3-none-any.whl"),
)

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--corpus", required=True, help="corpus folder")
parser.add_argument(
    "--preset", default="osv5m", help="layout: a key of gv.data.PRESETS"
)
parser.add_argument("--clip", required=True, help="CLIP checkpoint folder")
parser.add_argument("--wheel", default=DEFAULT_WHEEL, help="geoclip wheel")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--learning-rate", type=float, default=1e-4)
parser.add_argument(
    "--unfreeze",
    type=int,
    default=0,
    help="train the backbone's last N transformer blocks (0: frozen)",
)
parser.add_argument("--queue-size", type=int, default=1024)
parser.add_argument(
    "--gallery",
    choices=["train", "geoclip"],
    default="train",
    help="candidates: the training coordinates, or GeoCLIP's 100K gallery",
)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument(
    "--make-corpus",
    nargs=2,
    type=int,
    metavar=("N_TRAIN", "N_TEST"),
    help="first write a Blue Marble corpus of this size into --corpus",
)
parser.add_argument("--data-dir", default=experiment.DEFAULT_DATA_DIR)
parser.add_argument("--out", default=os.path.join("artifacts", "finetune"))
parser.add_argument("--export", default="", help="SavedModel base folder")
parser.add_argument(
    "--overwrite", action="store_true", help="replace earlier outputs"
)
args = parser.parse_args()
if args.unfreeze < 0 or args.epochs < 0 or args.batch_size < 1:
    parser.error("--unfreeze and --epochs must be >= 0, --batch-size >= 1")
keras.utils.set_random_seed(args.seed)
print(f"backend: {keras.backend.backend()}")

# ## 1. The corpus (built into a tfds data set on first use)
if args.make_corpus:
    n_train, n_test = args.make_corpus
    gv.data.write_blue_marble_corpus(
        args.corpus, n_train, n_test, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote a Blue Marble corpus: {n_train} train / {n_test} test")
builder = gv.data.geotagged_images(
    args.preset, args.corpus, data_dir=args.data_dir
)

# ## 2. The backbone and the released GeoCLIP
clip = gv.pretrained.clip_image_backbone(args.clip)
print(
    f"CLIP: {len(clip.vision_encoder.encoder_layers)} blocks, "
    f"{clip.image_size} px, {clip.projection_dim}-d features"
)


def load_split(split):
    """Images (CLIP-preprocessed, uint8) and labels of one split."""
    import tensorflow_datasets as tfds

    images, gps = [], []
    labels = {k: [] for k in gv.metrics.ADMIN_LEVELS}
    chunk = []

    def flush():
        if chunk:
            images.append(clip.preprocess(chunk).astype("uint8"))
            chunk.clear()

    for example in tfds.as_numpy(builder.as_dataset(split=split)):
        chunk.append(example["image"])
        gps.append(example["gps"])
        for k in labels:
            labels[k].append(example[k].decode("utf-8"))
        if len(chunk) == 256:
            flush()
    flush()
    data = {"image": np.concatenate(images), "gps": np.stack(gps)}
    data.update({k: np.array(v) for k, v in labels.items()})
    return data


splits = list(builder.info.splits)
if "train" in splits and "test" in splits:
    train, test = load_split("train"), load_split("test")
else:  # one split only (e.g. Im2GPS3k): hold out a fifth of it
    everything = load_split(splits[0])
    order = np.random.default_rng(args.seed).permutation(len(everything["gps"]))
    cut = len(order) // 5
    test = {k: v[order[:cut]] for k, v in everything.items()}
    train = {k: v[order[cut:]] for k, v in everything.items()}
print(f"corpus: {len(train['gps'])} train / {len(test['gps'])} test images")

model = gv.pretrained.geoclip_model(
    args.wheel,
    gallery=False,
    image_backbone=clip,
    queue_size=args.queue_size,
    seed=args.seed,
)
if args.gallery == "geoclip":
    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)
else:
    gallery = train["gps"]
model.set_gallery(gallery, verbose=0)
print(f"gallery: {len(gallery)} candidate locations ({args.gallery})")


def score(name, mode="gallery"):
    coords, _ = model.predict_gps(test["image"], top_k=1, mode=mode)
    report = gv.metrics.geolocation_report(
        coords[:, 0],
        test["gps"],
        admin_levels=True,
        true_labels={k: test[k] for k in gv.metrics.ADMIN_LEVELS},
    )
    print(f"{name:<32} {reporting.summary(report)}")
    return report


results = {"released GeoCLIP": [score("released GeoCLIP")]}

# ## 3. Fine-tune with the semivariogram loss
if args.unfreeze:
    model.image_encoder.trainable_backbone = True
    clip.set_trainable_blocks(args.unfreeze)
trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
print(
    f"fine-tuning {trainable:,} weights (backbone blocks trained: "
    f"{args.unfreeze})"
)
loss = gv.losses.SemivariogramContrastiveLoss()
model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss)
start = time.time()
model.fit(
    train["image"],
    train["gps"],
    batch_size=args.batch_size,
    epochs=args.epochs,
    shuffle=True,
    verbose=2,
    callbacks=[gv.callbacks.SemivariogramCallback()],
)
print(f"fine-tuned in {time.time() - start:.0f} s")

# ## 4. Score again; add the training photos as geotagged neighbours
results["fine-tuned"] = [score("fine-tuned")]
model.set_reference(train["image"], train["gps"], verbose=0)
results["fine-tuned, hybrid"] = [score("fine-tuned, hybrid", mode="hybrid")]
keys = [(f"acc_{t}km", f"{t} km %") for t in (25, 200, 750, 2500)]
keys += [("median_km", "median km"), ("acc_country", "country %")]
print(reporting.markdown_table(results, keys, {k: k for k in results}))

# ## 5. Save (never over an earlier run unless --overwrite)
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, "finetuned.keras")
model.save(path, overwrite=args.overwrite)
preset = model.save_to_preset(
    os.path.join(args.out, "preset"), overwrite=args.overwrite
)
print(f"saved {path} and the preset {preset}")
if args.export:
    exported = gv.export.export_saved_model(model, args.export)
    print(f"exported a SavedModel to {exported}")
