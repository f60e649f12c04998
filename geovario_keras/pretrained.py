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
import pickle
import zipfile
from collections import OrderedDict

import keras
import numpy as np

from geovario_keras.layers.image_encoder import ImageEncoder
from geovario_keras.layers.location_encoder import LocationEncoder

GEOCLIP_VERSION = "1.3.0"
GEOCLIP_SIGMAS = (1.0, 16.0, 256.0)
GEOCLIP_FEATURE_DIM = 768  # CLIP ViT-L/14 projected image features.

# Files of the wheel, relative to the `geoclip/model/` folder.
_FILES = {
    "location_encoder": "weights/location_encoder_weights.pth",
    "image_mlp": "weights/image_encoder_mlp_weights.pth",
    "logit_scale": "weights/logit_scale_weights.pth",
    "gallery": "gps_gallery/coordinates_100K.csv",
}

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# ------------------------------------------------------------ torch files
class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


def _rebuild_tensor(storage, offset, size, stride, *args):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[offset])
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, *args):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's `data.pkl` into numpy, nothing else.

    Only the handful of globals a state dict of plain tensors refers to are
    allowed; anything else (code, modules) is refused, as
    `torch.load(weights_only=True)` does.
    """

    _ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, read_record):
        super().__init__(file)
        self._read_record = read_record

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"Refusing to load `{module}.{name}`: not part of a plain tensor "
            "state dict."
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"Unknown persistent id {pid!r}.")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"Unsupported tensor storage {storage_type!r}."
            )
        data = self._read_record(f"data/{key}")
        return np.frombuffer(data, dtype=storage_type.dtype, count=numel)


def read_torch_checkpoint(file):
    """Reads a torch zip checkpoint of tensors into numpy, without torch.

    Args:
        file: a path or a binary file object of a file written by
            `torch.save` (zip format, the default since torch 1.6) holding a
            tensor or a (nested) dict of tensors.

    Returns:
        The same structure with `np.ndarray` in place of tensors.

    Raises:
        ValueError: if `file` is not a torch zip checkpoint, or holds
            anything but tensors.
    """
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{file!r} is not a torch zip checkpoint (written by torch.save "
            "with torch >= 1.6)."
        ) from e
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{file!r} has no single `data.pkl` record.")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and archive.read(order).strip() != b"little":
            raise ValueError(f"{file!r} is big-endian; not supported.")

        def read_record(name):
            return archive.read(prefix + name)

        try:
            return _TorchUnpickler(
                io.BytesIO(archive.read(pkl[0])), read_record
            ).load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"Cannot read {file!r}: {e}") from e


# --------------------------------------------------------------- sources
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
    expected = {
        "sigmas": GEOCLIP_SIGMAS,
        "num_features": 256,
        "hidden_units": 1024,
        "hidden_layers": 3,
        "embed_dim": 512,
    }
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
    from geovario_keras.layers.clip_image import CLIPImageFeatures

    backbone = encoder.backbone
    return backbone is None or (
        isinstance(backbone, CLIPImageFeatures) and encoder.built
    )


def _load_image_head(encoder, state):
    if not (
        isinstance(encoder, ImageEncoder)
        and _on_clip_features(encoder)
        and encoder.hidden_units == 768
        and encoder.embed_dim == 512
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
    encoder = LocationEncoder(**kwargs)
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
    from geovario_keras.layers.clip_image import CLIPImageFeatures
    from geovario_keras.model import GeoCLIP

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
            image_backbone, embed_dim=512, hidden_units=768
        ),
        location_encoder=LocationEncoder(),
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


# ------------------------------------------------------- CLIP image backbone

_CLIP_MODEL_TYPES = ("clip", "clip_vision_model")
_CLIP_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _read_json(path):
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _SafetensorsFolder:
    """Reads tensors by name from a folder's `model.safetensors` or its
    sharded index, as numpy (no PyTorch)."""

    def __init__(self, folder):
        from safetensors import safe_open

        index = os.path.join(folder, _CLIP_WEIGHTS[1])
        if os.path.isfile(index):
            weight_map = _read_json(index)["weight_map"]
        elif os.path.isfile(os.path.join(folder, _CLIP_WEIGHTS[0])):
            weight_map = None
        else:
            raise FileNotFoundError(
                f"No {' or '.join(_CLIP_WEIGHTS)} in {folder!r}: download "
                "the checkpoint with its safetensors weights (see "
                "`clip_image_backbone`)."
            )
        self._files, self._open = {}, safe_open
        self._folder, self._map = folder, weight_map

    def _file(self, key):
        name = _CLIP_WEIGHTS[0] if self._map is None else self._map.get(key)
        if name is None:
            return None
        if name not in self._files:
            self._files[name] = self._open(
                os.path.join(self._folder, name), framework="numpy"
            )
        return self._files[name]

    def get(self, key):
        for k in (key, "clip." + key):  # some exports nest under "clip."
            f = self._file(k)
            if f is not None and k in f.keys():
                return f.get_tensor(k)
        raise KeyError(
            f"The checkpoint in {self._folder!r} has no tensor {key!r}: is it "
            "a CLIP model?"
        )


def _vision_encoder_from_hf(config, dtype):
    from geovario_keras.layers.clip_image import require_keras_hub

    CLIPVisionEncoder = require_keras_hub().models.CLIPVisionEncoder

    vision = config.get("vision_config", config)
    size = int(vision.get("image_size", 224))
    act = vision.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"Unsupported CLIP activation {act!r} in config.json (expected "
            "'quick_gelu' or 'gelu')."
        )
    encoder = CLIPVisionEncoder(
        patch_size=int(vision["patch_size"]),
        hidden_dim=int(vision["hidden_size"]),
        num_layers=int(vision["num_hidden_layers"]),
        num_heads=int(vision["num_attention_heads"]),
        intermediate_dim=int(vision["intermediate_size"]),
        intermediate_activation=act,
        image_shape=(size, size, 3),
        dtype=dtype,
    )
    projection_dim = config.get("projection_dim") or vision.get(
        "projection_dim"
    )
    return encoder, int(projection_dim)


def _assign(variable, value, key):
    value = np.asarray(value)
    if tuple(variable.shape) != value.shape:
        raise ValueError(
            f"Checkpoint tensor {key!r} has shape {value.shape}; the layer "
            f"expects {tuple(variable.shape)}."
        )
    variable.assign(
        value.astype(keras.backend.standardize_dtype(variable.dtype))
    )


def _port_clip_vision(encoder, projection, tensors):
    """Copies a Hugging Face CLIP checkpoint's vision weights."""

    def put(variable, key, fn=None):
        value = tensors.get(key)
        _assign(variable, value if fn is None else fn(value), key)

    def dense(layer, key):
        put(layer.kernel, f"{key}.weight", lambda w: w.T)
        if layer.bias is not None:
            put(layer.bias, f"{key}.bias")

    def norm(layer, key):
        put(layer.gamma, f"{key}.weight")
        put(layer.beta, f"{key}.bias")

    emb = encoder.embedding
    prefix = "vision_model."
    put(
        emb.patch_embedding.kernel,
        prefix + "embeddings.patch_embedding.weight",
        lambda w: np.transpose(w, (2, 3, 1, 0)),
    )
    put(
        emb.position_embedding.embeddings,
        prefix + "embeddings.position_embedding.weight",
    )
    put(emb.class_embedding, prefix + "embeddings.class_embedding")
    # Position ids are a buffer, not saved by transformers: 0..T-1.
    emb.position_ids.assign(
        np.arange(emb.num_positions, dtype="int64")
        .reshape(1, -1)
        .astype(keras.backend.standardize_dtype(emb.position_ids.dtype))
    )
    norm(encoder.pre_layer_norm, prefix + "pre_layrnorm")
    for i, block in enumerate(encoder.encoder_layers):
        key = f"{prefix}encoder.layers.{i}."
        heads, width = block.num_heads, block.hidden_dim
        att = block.attention
        for name, layer in (
            ("q_proj", att.query_dense),
            ("k_proj", att.key_dense),
            ("v_proj", att.value_dense),
        ):
            put(
                layer.kernel,
                f"{key}self_attn.{name}.weight",
                lambda w: w.T.reshape(width, heads, width // heads),
            )
            put(
                layer.bias,
                f"{key}self_attn.{name}.bias",
                lambda b: b.reshape(heads, width // heads),
            )
        put(
            att.output_dense.kernel,
            f"{key}self_attn.out_proj.weight",
            lambda w: w.T.reshape(heads, width // heads, width),
        )
        put(att.output_dense.bias, f"{key}self_attn.out_proj.bias")
        norm(block.layer_norm_1, key + "layer_norm1")
        norm(block.layer_norm_2, key + "layer_norm2")
        dense(block.dense_1, key + "mlp.fc1")
        dense(block.dense_2, key + "mlp.fc2")
    norm(encoder.layer_norm, prefix + "post_layernorm")
    put(projection.kernel, "visual_projection.weight", lambda w: w.T)


def _keras_hub_normalisation(folder):
    """(mean, std) from a keras-hub preset's image converter
    (`image_converter.json`, or the one inside `preprocessor.json`), else
    CLIP's."""
    from geovario_keras.layers.clip_image import CLIP_MEAN
    from geovario_keras.layers.clip_image import CLIP_STD

    conf = None
    path = os.path.join(folder, "image_converter.json")
    if os.path.isfile(path):
        conf = _read_json(path).get("config", {})
    else:
        path = os.path.join(folder, "preprocessor.json")
        if os.path.isfile(path):
            conf = _read_json(path).get("config", {}).get("image_converter")
            conf = (conf or {}).get("config", {})
    scale, offset = (conf or {}).get("scale"), (conf or {}).get("offset")
    if not (isinstance(scale, list) and isinstance(offset, list)):
        return CLIP_MEAN, CLIP_STD
    # The converter computes pixel * scale + offset on 0-255 pixels.
    std = [1.0 / (255.0 * s) for s in scale]
    mean = [-o * d for o, d in zip(offset, std)]
    return tuple(mean), tuple(std)


def clip_image_backbone(path, dtype=None):
    """CLIP's image tower from a local folder, as `gv.layers.CLIPImageFeatures`.

    Reads, with no network access, either

    - a Hugging Face `transformers` CLIP checkpoint folder (`config.json`
      with `model_type` `"clip"` or `"clip_vision_model"`, and
      `model.safetensors` or its sharded index), e.g. a snapshot of
      `openai/clip-vit-large-patch14` (GeoCLIP's backbone), fetched once,
      online, with

      ```
      hf download openai/clip-vit-large-patch14 config.json \\
          preprocessor_config.json model.safetensors --local-dir ~/clip-vit-l14
      ```

      (its `preprocessor_config.json`, when present, gives the mean and
      standard deviation; else CLIP's are used); or
    - a keras-hub preset folder of a `CLIPBackbone` (`config.json` with a
      `registered_name`, `model.weights.h5`), e.g. one written by
      `keras_hub.models.CLIPBackbone(...).save_to_preset(folder)`; the
      normalisation comes from its `CLIPImageConverter` when the folder
      has one (else CLIP's).

    The vision weights are copied into a keras-hub `CLIPVisionEncoder`
    (the text tower is not loaded); the result computes CLIP's projected
    image embedding (`CLIPModel.get_image_features`) from pixels.

    Args:
        path: the checkpoint folder.
        dtype: dtype policy of the layers (None: the global policy).

    Returns:
        A built `gv.layers.CLIPImageFeatures`.

    Example:

    ```python
    clip = gv.pretrained.clip_image_backbone("~/clip-vit-l14")
    model = gv.pretrained.geoclip_model(wheel, image_backbone=clip)
    coords, probs = model.predict_gps(["photo1.jpg", "photo2.png"])
    ```
    """
    from geovario_keras.layers.clip_image import CLIP_MEAN
    from geovario_keras.layers.clip_image import CLIP_STD
    from geovario_keras.layers.clip_image import CLIPImageFeatures
    from geovario_keras.layers.clip_image import require_keras_hub

    keras_hub = require_keras_hub()
    folder = os.path.expanduser(os.fspath(path))
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"`path` must be a CLIP checkpoint folder with a config.json; "
            f"{folder!r} has none."
        )
    config = _read_json(config_path)
    if "registered_name" in config:
        clip = keras_hub.models.CLIPBackbone.from_preset(folder, dtype=dtype)
        mean, std = _keras_hub_normalisation(folder)
        layer = CLIPImageFeatures(
            clip.vision_encoder,
            int(clip.projection_dim),
            image_mean=mean,
            image_std=std,
            dtype=dtype,
        )
        layer.build((None,) + tuple(clip.vision_encoder.image_shape))
        layer.projection.set_weights(clip.vision_projection.get_weights())
        return layer
    model_type = config.get("model_type")
    if model_type not in _CLIP_MODEL_TYPES:
        raise ValueError(
            f"{config_path!r} describes a {model_type!r} model; expected a "
            f"CLIP checkpoint (model_type in {_CLIP_MODEL_TYPES}) or a "
            "keras-hub CLIPBackbone preset."
        )
    tensors = _SafetensorsFolder(folder)
    encoder, projection_dim = _vision_encoder_from_hf(config, dtype)
    mean, std = CLIP_MEAN, CLIP_STD
    processor = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(processor):
        proc = _read_json(processor)
        mean = tuple(proc.get("image_mean", mean))
        std = tuple(proc.get("image_std", std))
    layer = CLIPImageFeatures(
        encoder, projection_dim, image_mean=mean, image_std=std, dtype=dtype
    )
    layer.build((None,) + tuple(encoder.image_shape))
    _port_clip_vision(encoder, layer.projection, tensors)
    return layer
