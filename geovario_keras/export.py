"""Export a `GeoCLIP` as a TensorFlow SavedModel for TF Serving.

`export_saved_model(model, "saved_models/geoclip")` writes
`saved_models/geoclip/<version>/` (`saved_model.pb` + `variables/`), the
layout TF Serving expects under its `--model_base_path`. The SavedModel has
three signatures with stable names and dtypes (`N` is the batch):

- `predict_gps` (also `serving_default`): input `images` (the image
  encoder's input, float32) -> `coordinates` float32 `(N, top_k, 2)`
  (latitude, longitude in degrees, best first) and `probabilities` float32
  `(N, top_k)`.
- `encode_image`: input `images` -> `embeddings` float32 `(N, D)`,
  L2-normalised.
- `encode_location`: input `gps` float32 `(N, 2)` (latitude, longitude in
  degrees) -> `embeddings` float32 `(N, D)`, L2-normalised.

With a reference set (`model.set_reference`), a fourth signature,
`nearest_references`: input `images` -> `coordinates` float32 `(N, K, 2)`
of the `K = min(16, reference size)` most similar reference images, best
first, and their voting `weights` float32 `(N, K)` (softmax of the scaled
similarities over the K), as `gv.retrieval` uses them; the client votes
(`gv.retrieval.neighbour_density`, and `gv.retrieval.density_modes` for
the candidates between the neighbours).

The gallery cached by `model.set_gallery` is baked into `predict_gps`, and
probabilities are the softmax over the whole gallery, as in
`GeoCLIP.predict_gps`. The served graph does not validate coordinates:
`encode_location` expects latitudes in [-90, 90] and longitudes in
[-180, 180].

Backends: TensorFlow exports directly; JAX
exports directly through `jax2tf` (one `XlaCallModule` op); PyTorch cannot
(`torch.export` has no SavedModel path), so the model is saved as `.keras`
and exported by a TensorFlow-backend subprocess. All three need the
`tensorflow` package installed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
from keras import ops

from geovario_keras.model import GeoCLIP
from geovario_keras.retrieval import RetrievalOptions

SIGNATURES = ("predict_gps", "encode_image", "encode_location")


def _argmax_top_k(logits, k):
    """`top_k` by `k` rounds of argmax (ties: lowest index first).

    On JAX, `lax.top_k` lowers to a sort whose batch dimension stays
    dynamic in the serialised module, which TensorFlow 2.21's
    `XlaCallModule` refuses ("Module has dynamic shapes"). Argmax and
    `where` serialise cleanly. `k` is small (top-k retrieval), so this costs
    k passes over the logits.
    """
    size = ops.shape(logits)[-1]
    positions = ops.expand_dims(ops.arange(size, dtype="int32"), 0)
    values, indices = [], []
    for _ in range(k):
        index = ops.cast(ops.argmax(logits, axis=-1), "int32")
        values.append(ops.max(logits, axis=-1))
        indices.append(index)
        logits = ops.where(
            positions == ops.expand_dims(index, 1), -np.inf, logits
        )
    return ops.stack(values, axis=1), ops.stack(indices, axis=1)


class _ServingVariables(keras.layers.Layer):
    """Presents every variable of a model as read-only serving state.

    On JAX, `ExportArchive` writes every non-trainable variable back after
    each call of an endpoint (they may be updated, e.g. RNG seeds). Serving
    updates none, and rewriting the baked gallery (100K x 512 floats) on
    every request would dominate its cost, so all variables are tracked as
    "trainable" (which only means "not written back" to the archive).
    """

    def __init__(self, model):
        super().__init__(name="serving_variables")
        self._serving_vars = list(model.variables)
        self.built = True

    @property
    def trainable_variables(self):
        return list(self._serving_vars)

    @property
    def non_trainable_variables(self):
        return []


def _input_spec(model, input_signature):
    if input_signature is not None:
        if isinstance(input_signature, keras.InputSpec):
            spec = input_signature
        else:
            spec = keras.InputSpec(
                shape=tuple(input_signature), dtype="float32"
            )
        if spec.shape is None:
            raise ValueError("`input_signature` needs a shape.")
        return keras.InputSpec(
            shape=(None,) + tuple(spec.shape)[1:],
            dtype=spec.dtype or "float32",
            name="images",
        )
    shape = model.image_input_shape
    if shape is None:
        raise ValueError(
            "Cannot tell the model's input shape: call the model once on a "
            "batch (or pass `input_signature=(None, ...)`) before exporting."
        )
    return keras.InputSpec(
        shape=(None,) + shape[1:], dtype="float32", name="images"
    )


def _check_exportable(model, top_k):
    if not isinstance(model, GeoCLIP):
        raise ValueError(
            f"`model` must be a `gv.GeoCLIP`; got {type(model).__name__}."
        )
    # `predict_gps` serves top-k over the gallery baked into the export.
    model.gallery.check_top_k(top_k)


def _write(model, directory, top_k, spec, verbose):
    """Writes the SavedModel with this process's backend (TF or JAX)."""
    backend = keras.backend.backend()
    # JAX traces a subclassed model only after one eager call.
    if None not in spec.shape[1:]:
        model(ops.zeros((1,) + tuple(spec.shape[1:]), spec.dtype))
    top_k_fn = _argmax_top_k if backend == "jax" else None

    def search(layer, images, k):
        """Top-k of `layer` (gallery or reference set) for the images."""
        query = model(images, training=False)
        scale = model.temperature()
        return layer(query, scale=scale, top_k=k, top_k_fn=top_k_fn)

    def predict_gps(images):
        coords, probs = search(model.gallery, images, top_k)
        return {"coordinates": coords, "probabilities": probs}

    def encode_image(images):
        return {"embeddings": model(images, training=False)}

    neighbours = min(RetrievalOptions().neighbours, model.reference.size)

    def nearest_references(images):
        coords, probs = search(model.reference, images, neighbours)
        weights = probs / ops.sum(probs, axis=-1, keepdims=True)
        return {"coordinates": coords, "weights": weights}

    def encode_location(gps):
        return {"embeddings": model.location_embeddings(gps)}

    gps_spec = keras.InputSpec(shape=(None, 2), dtype="float32", name="gps")
    archive = keras.export.ExportArchive()
    archive.track(_ServingVariables(model) if backend == "jax" else model)
    # The first endpoint is also `serving_default`.
    archive.add_endpoint("predict_gps", predict_gps, [spec])
    archive.add_endpoint("encode_image", encode_image, [spec])
    archive.add_endpoint("encode_location", encode_location, [gps_spec])
    if neighbours:
        archive.add_endpoint("nearest_references", nearest_references, [spec])
    archive.write_out(directory, verbose=verbose)


def _next_version(base):
    versions = [
        int(d)
        for d in (os.listdir(base) if os.path.isdir(base) else [])
        if d.isdigit()
    ]
    return max(versions, default=0) + 1


def export_saved_model(
    model,
    path,
    version=None,
    top_k=5,
    input_signature=None,
    overwrite=False,
    verbose=False,
):
    """Exports `model` as a SavedModel in the TF Serving layout.

    Writes `<path>/<version>/`; `path` is the model's base folder (TF
    Serving's `--model_base_path`), e.g. `saved_models/geoclip`. The version
    folder is written next to its final place and renamed into it when
    complete, so a running TF Serving never sees a half-written version.

    Args:
        model: a built `gv.GeoCLIP` with a gallery (`set_gallery`).
        path: base folder; created if missing.
        version: int >= 1, or None for one more than the highest existing
            version (1 in an empty folder).
        top_k: int in `[1, gallery size]`: predictions per image returned by
            `predict_gps`.
        input_signature: the image input's shape `(None, ...)` or a
            `keras.InputSpec`; default: the shape the model was built with,
            float32.
        overwrite: bool. Replace an existing `<path>/<version>/`.
        verbose: bool. Print the archive's summary.

    Returns:
        The version folder written (str).

    Example:

    >>> import os, tempfile
    >>> model = gv.GeoCLIP(
    ...     gv.layers.ImageEncoder(None, embed_dim=16, hidden_units=32),
    ...     gv.layers.LocationEncoder(num_features=16, hidden_units=32,
    ...                               hidden_layers=1, embed_dim=16),
    ...     queue_size=0)
    >>> features = np.random.default_rng(0).normal(size=(3, 8))
    >>> features = features.astype("float32")
    >>> _ = model(features)  # builds the model for (N, 8) inputs
    >>> model.set_gallery([[48.86, 2.35], [35.68, 139.69], [-33.87, 151.21]],
    ...                   verbose=0)
    >>> base = os.path.join(tempfile.mkdtemp(), "geoclip")
    >>> os.path.basename(export_saved_model(model, base, top_k=2))
    '1'

    Then, in any TensorFlow process (or TF Serving on `base`):

    >>> import tensorflow as tf
    >>> served = tf.saved_model.load(os.path.join(base, "1"))
    >>> out = served.signatures["predict_gps"](images=tf.constant(features))
    >>> tuple(out["coordinates"].shape), tuple(out["probabilities"].shape)
    ((3, 2, 2), (3, 2))
    """
    _check_exportable(model, top_k)
    if os.path.isfile(os.path.join(os.fspath(path), "saved_model.pb")):
        raise ValueError(
            f"`path` {os.fspath(path)!r} is itself a SavedModel (a version "
            "folder): pass the model's base folder, its parent, which holds "
            "the numbered versions."
        )
    spec = _input_spec(model, input_signature)
    if version is None:
        version = _next_version(path)
    if not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"`version` must be an int >= 1; got {version!r}.")
    target = os.path.join(os.fspath(path), str(int(version)))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"{target!r} exists: pass `overwrite=True` or another `version`."
        )
    os.makedirs(path, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".export-{version}-", dir=path)
    try:
        tmp = os.path.join(staging, "model")
        if keras.backend.backend() in ("tensorflow", "jax"):
            _write(model, tmp, int(top_k), spec, verbose)
        else:
            _export_in_subprocess(model, tmp, int(top_k), spec, staging)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_in_subprocess(model, directory, top_k, spec, scratch):
    """PyTorch backend: save `.keras`, export from a TensorFlow process."""
    keras_path = os.path.join(scratch, "model.keras")
    model.save(keras_path)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [
        sys.executable,
        "-m",
        "geovario_keras.export",
        keras_path,
        directory,
        "--top-k",
        str(top_k),
        "--input-shape",
        json.dumps(list(spec.shape)),
        "--input-dtype",
        str(spec.dtype),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            "Exporting through a TensorFlow-backend subprocess failed "
            f"(exit {proc.returncode}). Its output ends with:\n"
            + (proc.stderr or proc.stdout)[-3000:]
        )


def _main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m geovario_keras.export",
        description="Export a saved GeoCLIP (.keras) as a SavedModel "
        "(run with KERAS_BACKEND=tensorflow or jax).",
    )
    parser.add_argument("model", help="path of a .keras file")
    parser.add_argument("directory", help="SavedModel folder to write")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--input-shape", default=None, help="JSON list")
    parser.add_argument("--input-dtype", default="float32")
    args = parser.parse_args(argv)
    if keras.backend.backend() not in ("tensorflow", "jax"):
        parser.error("run with KERAS_BACKEND=tensorflow or jax")
    # Registers every serializable class (the model imports most; the
    # location encoders other than GeoCLIP's live in `layers`).
    import geovario_keras.layers  # noqa: F401

    model = keras.saving.load_model(args.model, compile=False)
    spec = _input_spec(
        model,
        None
        if args.input_shape is None
        else keras.InputSpec(
            shape=tuple(json.loads(args.input_shape)), dtype=args.input_dtype
        ),
    )
    _check_exportable(model, args.top_k)
    _write(model, args.directory, args.top_k, spec, verbose=False)


if __name__ == "__main__":
    _main()
