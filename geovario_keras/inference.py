"""Fast batched inference of an encoder layer to normalised numpy arrays.

`GeoCLIP.encode_image`, `encode_location` and `set_gallery` go through
`embed`: one compiled function per layer (made by
`geovario_keras.backend.inference_function` and cached on the layer,
outside Keras tracking) and a plain batched loop. Compared with
`Model.predict` there is no data adapter, no callbacks and no final
concatenation, the last batch is padded to the full size (no second
compilation), and the next batch is dispatched before the previous one is
read back (JAX and GPUs run asynchronously). BENCHMARKS.md has the
measurements behind these choices.
"""

import keras
import numpy as np
from keras import ops

from geovario_keras import backend
from geovario_keras.layers.contrastive_head import normalise
from geovario_keras.utils import check_int

_CACHE = "_geovario_inference_functions"


def _normalised_output(layer, x):
    return normalise(layer(x, training=False))


def embedding_function(layer, jit_compile=None):
    """Cached compiled `x -> normalise(layer(x, training=False))`.

    The function reads the layer's current weights on every call; it is
    cached on the layer (untracked, so the layer's weights are unchanged).

    Args:
        layer: a built Keras layer.
        jit_compile: the model's `jit_compile` setting (TensorFlow: XLA iff
            True).
    """
    cache = layer.__dict__.setdefault(_CACHE, {})
    key = jit_compile is True
    if key not in cache:
        cache[key] = backend.inference_function(
            layer, _normalised_output, jit_compile
        )
    return cache[key]


def embed(layer, x, dim, batch_size, verbose=0, jit_compile=None):
    """Normalised float32 embeddings of `x` through `layer`, as numpy.

    Args:
        layer: a built encoder layer with `dim` outputs.
        x: numpy array `(N, ...)`.
        dim: int. The layer's output size.
        batch_size: int >= 1. Rows per step.
        verbose: Keras progress-bar verbosity (0, 1, 2 or "auto").
        jit_compile: see `embedding_function`.

    Returns:
        `(N, dim)` float32 numpy array.
    """
    check_int("batch_size", batch_size)
    n = len(x)
    out = np.empty((n, dim), "float32")
    if n == 0:
        return out
    fn = embedding_function(layer, jit_compile)
    batch_size = min(batch_size, n)
    progbar = None
    if verbose not in (0, "silent") and n > batch_size:
        progbar = keras.utils.Progbar(
            n, verbose=1 if verbose == "auto" else verbose
        )
    pending = None
    for start in range(0, n, batch_size):
        chunk = x[start : start + batch_size]
        size = len(chunk)
        if size < batch_size:
            pad = np.zeros((batch_size - size,) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        result = fn(ops.convert_to_tensor(chunk))
        if pending is not None:
            _store(out, *pending, progbar)
        pending = (start, size, result)
    _store(out, *pending, progbar)
    return out


def _store(out, start, size, result, progbar):
    out[start : start + size] = ops.convert_to_numpy(result)[:size]
    if progbar is not None:
        progbar.update(start + size)
