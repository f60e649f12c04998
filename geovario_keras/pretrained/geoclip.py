"""GeoCLIP's released weights, read from the files of the `geoclip` wheel.

The `geoclip` PyPI package 1.3.0 (Vivanco Cepeda et al., NeurIPS 2023; MIT
licence, Copyright (c) 2024 Vicente Vivanco) ships the pretrained
location encoder (with its random Fourier matrices `B`), the MLP head that
maps 768-d CLIP ViT-L/14 image features to the 512-d embedding, the learned
logit scale and a 100,000-point GPS gallery.
Its Fourier-feature code comes from the `rff` package (BSD-3-Clause).

This module reads those files **without importing `geoclip` and without
PyTorch**: the `.pth` checkpoints are torch zip archives, decoded here with a
restricted unpickler into numpy arrays. Nothing is downloaded: point `source`
at a local copy, obtained once with

```
pip download geoclip==1.3.0 --no-deps -d ~/geoclip
```

(`source="~/geoclip/geoclip-1.3.0-py3-none-any.whl"`), or at an unpacked
wheel / installed `geoclip` folder. With `source=None` an installed `geoclip`
package is located (not imported) with `importlib.util.find_spec`.

The CLIP ViT-L/14 image backbone is not part of the wheel: `geoclip_model`
takes precomputed 768-d CLIP image features, or photos when given the
backbone read from a local checkpoint folder by `clip_image_backbone`.
"""

import csv
import importlib.util
import io
import os
import zipfile

import keras
import numpy as np

from geovario_keras.layers.clip_image import CLIPImageFeatures
from geovario_keras.layers.image_encoder import ImageEncoder
from geovario_keras.layers.location_encoder import LocationEncoder
from geovario_keras.model import GeoCLIP
from geovario_keras.pretrained.torch_checkpoint import read_torch_checkpoint

GEOCLIP_VERSION = "1.3.0"
GEOCLIP_SIGMAS = (1.0, 16.0, 256.0)
GEOCLIP_FEATURE_DIM = 768  # CLIP ViT-L/14 projected image features.
# The released model's architecture: the arguments of its two encoders
# (the location encoder's are also `LocationEncoder`'s defaults).
GEOCLIP_CONFIG = {
    "location_encoder": {
        "sigmas": GEOCLIP_SIGMAS,
        "num_features": 256,
        "hidden_units": 1024,
        "hidden_layers": 3,
        "embed_dim": 512,
    },
    "image_encoder": {"embed_dim": 512, "hidden_units": GEOCLIP_FEATURE_DIM},
}

# Files of the wheel, relative to the `geoclip/model/` folder.
_FILES = {
    "location_encoder": "weights/location_encoder_weights.pth",
    "image_mlp": "weights/image_encoder_mlp_weights.pth",
    "logit_scale": "weights/logit_scale_weights.pth",
    "gallery": "gps_gallery/coordinates_100K.csv",
}


class GeoCLIPFiles:
    """Locates the files of a `geoclip` wheel (or unpacked copy).

    Args:
        source: path to `geoclip-1.3.0-py3-none-any.whl`, or to a folder
            that contains the package's `model/weights/...` files (an
            unpacked wheel, a site-packages `geoclip` folder, or its `model`
            subfolder). `None`: the installed `geoclip` package, located
            without importing it.
    """

    def __init__(self, source=None):
        if source is None:
            spec = importlib.util.find_spec("geoclip")
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(
                    "No `source` given and no installed `geoclip` package "
                    "found. Download the wheel once (no network is used at "
                    "run time):\n  pip download geoclip==1.3.0 --no-deps -d "
                    "DIR\nand pass `source='DIR/geoclip-1.3.0-py3-none-any."
                    "whl'`."
                )
            source = list(spec.submodule_search_locations)[0]
        self.source = os.path.expanduser(os.fspath(source))
        if not os.path.exists(self.source):
            raise FileNotFoundError(f"`source` {self.source!r} does not exist.")
        self._zip = None
        if os.path.isfile(self.source):
            try:
                self._zip = zipfile.ZipFile(self.source)
            except zipfile.BadZipFile as e:
                raise ValueError(
                    f"`source` {self.source!r} is neither a folder nor a "
                    "wheel (zip) file."
                ) from e
            members = self._zip.namelist()
        else:
            members = [
                os.path.relpath(os.path.join(root, f), self.source).replace(
                    os.sep, "/"
                )
                for root, _, files in os.walk(self.source)
                for f in files
            ]
        self.paths = {}
        for key, suffix in _FILES.items():
            hits = sorted(
                (m for m in members if m == suffix or m.endswith("/" + suffix)),
                key=len,
            )
            if hits:
                self.paths[key] = hits[0]

    def open(self, key):
        """A binary file object of one file (`location_encoder`, ...)."""
        if key not in self.paths:
            raise FileNotFoundError(
                f"`{_FILES[key]}` not found in {self.source!r}; expected the "
                f"files of the geoclip {GEOCLIP_VERSION} wheel."
            )
        if self._zip is not None:
            return io.BytesIO(self._zip.read(self.paths[key]))
        return open(os.path.join(self.source, self.paths[key]), "rb")

    def checkpoint(self, key):
        with self.open(key) as f:
            return read_torch_checkpoint(f)


def _files(source):
    return source if isinstance(source, GeoCLIPFiles) else GeoCLIPFiles(source)


def load_geoclip_gallery(source=None, deduplicate=False):
    """GeoCLIP's 100K GPS gallery, `(M, 2)` float32 (latitude, longitude).

    Args:
        source: see `GeoCLIPFiles`.
        deduplicate: bool. The file has 5,877 repeated rows (the reference
            keeps them; a repeated point only splits its probability). With
            `True`, keep the first occurrence of each (order kept): 94,123
            points.
    """
    with _files(source).open("gallery") as f:
        rows = list(csv.reader(io.TextIOWrapper(f, "utf-8")))
    header = [h.strip().upper() for h in rows[0]]
    if header[:2] != ["LAT", "LON"]:
        raise ValueError(f"Unexpected gallery header {rows[0]!r}.")
    gps = np.asarray(rows[1:], dtype="float64")[:, :2]
    if deduplicate:
        _, first = np.unique(gps, axis=0, return_index=True)
        gps = gps[np.sort(first)]
    return gps.astype("float32")


# ----------------------------------------------------------------- loaders
def _check_location_encoder(encoder, n_branches):
    expected = GEOCLIP_CONFIG["location_encoder"]
    got = {k: getattr(encoder, k, None) for k in expected}
    got["sigmas"] = tuple(float(s) for s in got["sigmas"] or ())
    if len(got["sigmas"]) != n_branches or got != expected:
        raise ValueError(
            "The location encoder must have GeoCLIP's configuration to load "
            f"its weights: {expected}; got {got}. Use "
            "`gv.layers.LocationEncoder()` (the defaults) or "
            "`gv.pretrained.geoclip_location_encoder(source)`."
        )


def _load_location_encoder(encoder, state):
    n = len({k.split(".")[0] for k in state if k.startswith("LocEnc")})
    _check_location_encoder(encoder, n)
    if not encoder.built:
        encoder.build((None, 2))
    for i in range(n):
        p = f"LocEnc{i}."
        encoder.fourier[i].set_weights([state[p + "capsule.0.b"]])
        # torch Linear stores (out, in); Keras Dense kernels are (in, out).
        for dense, idx in zip(encoder.hidden[i], (1, 3, 5)):
            dense.set_weights(
                [
                    state[f"{p}capsule.{idx}.weight"].T,
                    state[f"{p}capsule.{idx}.bias"],
                ]
            )
        encoder.heads[i].set_weights(
            [state[p + "head.0.weight"].T, state[p + "head.0.bias"]]
        )


def _on_clip_features(encoder):
    """Whether `encoder` takes CLIP image features: precomputed (no
    backbone), or from a built `CLIPImageFeatures` (its 768-d width is
    checked with the MLP's input width by `_load_image_head`)."""

    backbone = encoder.backbone
    return backbone is None or (
        isinstance(backbone, CLIPImageFeatures) and encoder.built
    )


def _load_image_head(encoder, state):
    if not (
        isinstance(encoder, ImageEncoder)
        and _on_clip_features(encoder)
        and encoder.hidden_units
        == GEOCLIP_CONFIG["image_encoder"]["hidden_units"]
        and encoder.embed_dim == GEOCLIP_CONFIG["image_encoder"]["embed_dim"]
        and (
            not encoder.built
            or encoder.hidden.kernel.shape[0] == GEOCLIP_FEATURE_DIM
        )
    ):
        raise ValueError(
            "GeoCLIP's image MLP head (768 -> 768 ReLU -> 512) loads into a "
            "`gv.layers.ImageEncoder(None, embed_dim=512, hidden_units=768)` "
            "on 768-d CLIP features (or a built one on a 768-d "
            f"`CLIPImageFeatures` backbone); got {encoder!r}. Pass "
            "`image_head=False` to load the location side only."
        )
    if not encoder.built:
        encoder.build((None, GEOCLIP_FEATURE_DIM))
    encoder.hidden.set_weights([state["0.weight"].T, state["0.bias"]])
    encoder.head.set_weights([state["2.weight"].T, state["2.bias"]])


def load_geoclip_weights(
    target,
    source=None,
    image_head=True,
    logit_scale=True,
    gallery=True,
    gallery_batch_size=4096,
    verbose="auto",
):
    """Loads GeoCLIP's released weights into a model or location encoder.

    Args:
        target: a `gv.GeoCLIP` or a `gv.layers.LocationEncoder` with
            GeoCLIP's configuration (the defaults).
        source: the geoclip 1.3.0 wheel or folder; see `GeoCLIPFiles`.
        image_head: bool. For a `GeoCLIP`: load the 768 -> 512 image MLP
            into its image encoder (which must be
            `ImageEncoder(None, embed_dim=512, hidden_units=768)`).
        logit_scale: bool. For a `GeoCLIP`: load the learned logit scale
            (3.681, a temperature of 39.7).
        gallery: bool. For a `GeoCLIP`: encode the 100K-point gallery with
            the loaded encoder and cache it (`set_gallery`; the slowest
            step on a CPU, see BENCHMARKS.md).
        gallery_batch_size: int. Gallery points encoded per step.
        verbose: progress bar of the gallery encoding.

    Returns:
        `target`.

    Example:

    ```python
    # Needs the wheel: pip download geoclip==1.3.0 --no-deps -d .
    model = gv.GeoCLIP()  # GeoCLIP's configuration, 768-d CLIP features
    gv.pretrained.load_geoclip_weights(
        model, "geoclip-1.3.0-py3-none-any.whl")
    clip_features = np.zeros((2, 768), "float32")  # CLIP ViT-L/14 features
    coords, probs = model.predict_gps(clip_features, top_k=5)
    ```
    """
    files = _files(source)
    if isinstance(target, LocationEncoder):
        encoder, model = target, None
    elif isinstance(getattr(target, "location_encoder", None), LocationEncoder):
        encoder, model = target.location_encoder, target
    else:
        raise ValueError(
            "`target` must be a `gv.GeoCLIP` or a "
            f"`gv.layers.LocationEncoder`; got {type(target).__name__}."
        )
    _load_location_encoder(encoder, files.checkpoint("location_encoder"))
    if model is None:
        return target
    if image_head:
        _load_image_head(model.image_encoder, files.checkpoint("image_mlp"))
    if not model.built:
        model.build((None, GEOCLIP_FEATURE_DIM))
    if logit_scale:
        value = np.asarray(files.checkpoint("logit_scale"), "float32")
        model.logit_scale.assign(value.reshape(()))
    if gallery:
        model.set_gallery(
            load_geoclip_gallery(files),
            batch_size=gallery_batch_size,
            verbose=verbose,
        )
    return target


def geoclip_location_encoder(source=None, **kwargs):
    """GeoCLIP's pretrained location encoder as a built `LocationEncoder`.

    Args:
        source: the geoclip 1.3.0 wheel or folder; see `GeoCLIPFiles`.
        **kwargs: `LocationEncoder` layer arguments (`name`, `dtype`,
            `trainable`); the architecture arguments are GeoCLIP's.

    Example:

    ```python
    wheel = "geoclip-1.3.0-py3-none-any.whl"
    enc = gv.pretrained.geoclip_location_encoder(wheel)
    emb = enc(np.array([[48.8566, 2.3522]], "float32"))  # (1, 512)
    ```
    """
    encoder = LocationEncoder(**GEOCLIP_CONFIG["location_encoder"], **kwargs)
    return load_geoclip_weights(encoder, source)


def geoclip_model(source=None, gallery=True, image_backbone=None, **kwargs):
    """GeoCLIP with the released weights: on CLIP features, or on photos.

    The image side is GeoCLIP's MLP head on 768-d CLIP ViT-L/14 image
    features (`CLIPModel.get_image_features`). The backbone is not in the
    wheel: without `image_backbone` the model takes those precomputed
    features; with `image_backbone=gv.pretrained.clip_image_backbone(path)`
    (a local `openai/clip-vit-large-patch14` snapshot) it takes pixels, and
    `predict_gps` takes a list of photos of any size (arrays or file
    paths), preprocessed as CLIP does. With `gallery=True` the 100K gallery
    is encoded and cached, ready for `predict_gps`.

    Args:
        source: the geoclip 1.3.0 wheel or folder; see `GeoCLIPFiles`.
        gallery: bool. Encode and cache the 100K gallery.
        image_backbone: None, or a `gv.layers.CLIPImageFeatures` with
            `projection_dim=768` (frozen; set `trainable_backbone` on the
            model's `image_encoder` to fine-tune it).
        **kwargs: other `gv.GeoCLIP` arguments (`queue_size`, `seed`, ...).

    Example:

    ```python
    wheel = "geoclip-1.3.0-py3-none-any.whl"
    clip = gv.pretrained.clip_image_backbone("~/clip-vit-l14")
    model = gv.pretrained.geoclip_model(wheel, image_backbone=clip)
    coords, probs = model.predict_gps(["photo.jpg"], top_k=5)
    ```
    """

    if image_backbone is None:
        input_shape = (1, GEOCLIP_FEATURE_DIM)
    elif not isinstance(image_backbone, CLIPImageFeatures):
        raise ValueError(
            "`image_backbone` must be a `gv.layers.CLIPImageFeatures` (see "
            "`gv.pretrained.clip_image_backbone`) or None; got "
            f"{type(image_backbone).__name__}."
        )
    elif image_backbone.projection_dim != GEOCLIP_FEATURE_DIM:
        raise ValueError(
            "GeoCLIP's image head takes the 768-d features of CLIP "
            "ViT-L/14 (`openai/clip-vit-large-patch14`); `image_backbone` "
            f"projects to {image_backbone.projection_dim}."
        )
    else:
        size = image_backbone.image_size
        input_shape = (1, size, size, 3)
    model = GeoCLIP(
        image_encoder=ImageEncoder(
            image_backbone, **GEOCLIP_CONFIG["image_encoder"]
        ),
        location_encoder=LocationEncoder(**GEOCLIP_CONFIG["location_encoder"]),
        **kwargs,
    )
    model(keras.ops.zeros(input_shape))
    return load_geoclip_weights(model, source, gallery=gallery)


def write_geoclip_preset(
    preset_dir, source=None, gallery=True, overwrite=False
):
    """Writes GeoCLIP's released weights as a preset folder.

    The released model (`geoclip_model(source, gallery)`: the image MLP on
    768-d CLIP features, the location encoder, the logit scale and, with
    `gallery=True`, the encoded 100K gallery) saved with
    `GeoCLIP.save_to_preset`, so that `gv.GeoCLIP.from_preset(preset_dir)`
    loads the released model and fine-tuned ones alike, on any backend,
    without the wheel.

    Args:
        preset_dir: the folder to write.
        source: the geoclip 1.3.0 wheel or folder; see `GeoCLIPFiles`.
        gallery: bool. Include the encoded 100K gallery (204 MB more).
        overwrite: bool. Replace an existing preset folder.

    Returns:
        The preset folder's absolute path.
    """
    model = geoclip_model(source, gallery=gallery)
    return model.save_to_preset(preset_dir, overwrite=overwrite)
