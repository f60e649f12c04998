"""Checks of image features before they reach a training or inference step.

One NaN or inf in a batch of image features turns the loss, then every
weight, into NaN. `checked_features` refuses such input with an error that
names where it is: at once for arrays, lists and tensors (the rows), and at
the bad batch, before its step runs, for a `tf.data.Dataset` or a
`keras.utils.PyDataset` (which are wrapped, not read ahead).
"""

import inspect
import sys

import keras
import numpy as np

from geovario_keras import backend
from geovario_keras import geo
from geovario_keras.utils import check_int

_CHECK_ROWS = 1 << 14


def _bad_rows(values):
    # The rows of an array or tensor with NaN or inf, read 16,384 rows at a
    # time: the temporary mask (and a tensor's host copy) stays a block's
    # size whatever the number of rows (one mask of a whole array is a
    # quarter of its float32 size, a host copy of a tensor all of it).
    bad = []
    for start in range(0, values.shape[0], _CHECK_ROWS):
        block = backend.host_array(values[start : start + _CHECK_ROWS])
        finite = np.isfinite(block.reshape(len(block), -1)).all(1)
        if not finite.all():
            bad.append(start + np.flatnonzero(~finite))
    return np.concatenate(bad) if bad else np.zeros((0,), "int64")


def _check_rows(name, values, where=None):
    """Raises a `ValueError` naming the rows of `values` with NaN or inf.

    `where(first_bad_row)` adds a place to the message (e.g. the batch).
    """
    bad = _bad_rows(values)
    if bad.size:
        place = where(bad[0]) if where else ""
        raise ValueError(
            f"`{name}` has NaN or infinite values in {bad.size} row(s), the "
            f"first at rows {bad[:5].tolist()}{place}: a single bad row "
            "turns the loss and the weights to NaN. Clean or drop those rows."
        )


def _float_array(x):
    # `x` to check, as it is (a numpy array or a tensor: no copy of the
    # whole), or None if it holds no floats.
    if backend.is_tensor(x):
        floats = "float" in keras.backend.standardize_dtype(x.dtype)
    else:
        x = np.asarray(x)
        floats = x.dtype.kind == "f"
    if not floats or len(x.shape) == 0 or 0 in tuple(x.shape):
        return None
    return x


def _first(element):
    """The inputs of a data-set element: `x` of `(x, y[, w])`, or itself."""
    return element[0] if isinstance(element, tuple) else element


class _FiniteBatches(keras.utils.PyDataset):
    """A `PyDataset` whose batches are checked as they are read."""

    def __init__(self, inner, name):
        super().__init__(
            workers=inner.workers,
            use_multiprocessing=inner.use_multiprocessing,
            max_queue_size=inner.max_queue_size,
        )
        self.inner = inner
        self.name = name

    @property
    def num_batches(self):
        return self.inner.num_batches

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        batch = self.inner[index]
        for part in keras.tree.flatten(_first(batch)):
            values = _float_array(part)
            if values is not None:
                _check_rows(self.name, values, lambda _: f" of batch {index}")
        return batch

    def on_epoch_begin(self):
        self.inner.on_epoch_begin()

    def on_epoch_end(self):
        self.inner.on_epoch_end()


def _finite_tf_dataset(dataset, name):
    import tensorflow as tf

    def check(index, element):
        asserts = [
            tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(t)),
                [f"`{name}` has NaN or infinite values in batch", index],
            )
            for t in tf.nest.flatten(_first(element))
            if t.dtype.is_floating
        ]
        with tf.control_dependencies(asserts):
            return tf.nest.map_structure(tf.identity, element)

    # Parallel but ordered: the check adds no serial stage to the pipeline.
    return dataset.enumerate().map(
        check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def checked_features(x, name="x", batch_size=None):
    """`x`, refused (or wrapped to be refused) if features are NaN or inf.

    - Arrays, concrete tensors and lists of numbers (returned as an array):
      a `ValueError` naming the first bad rows and, with `batch_size`, the
      batch of an unshuffled pass.
    - A `tf.data.Dataset`: returned wrapped, so that iterating it fails
      (`InvalidArgumentError`) at the first bad batch, naming it.
    - A `keras.utils.PyDataset`: returned wrapped, so that reading a bad
      batch raises a `ValueError` naming the batch and rows.

    Anything else (generators, dicts of inputs) passes unchecked.
    """
    if isinstance(x, list) and x and not isinstance(x[0], np.ndarray):
        if not backend.is_tensor(x[0]):
            x = np.asarray(x, "float32")
    if isinstance(x, keras.utils.PyDataset) and not isinstance(
        x, _FiniteBatches
    ):
        return _FiniteBatches(x, name)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(x, tf.data.Dataset):
        return _finite_tf_dataset(x, name)
    if not (isinstance(x, np.ndarray) or backend.is_tensor(x)):
        return x
    values = _float_array(x)
    if values is not None:

        def where(row):
            return (
                f" (batch {row // batch_size} unshuffled)" if batch_size else ""
            )

        _check_rows(name, values, where)
    return x


def checked_arguments(method, x, y, args, kwargs):
    """`method`'s arguments by name, with `x`, `y`, `batch_size` checked."""
    signature = inspect.signature(method)
    a = dict(signature.bind(x, y, *args, **kwargs).arguments)
    # Keywords the method takes through `**kwargs` (Keras's `fit` calls
    # `evaluate(..., _use_cached_eval_dataset=True)`) stay keywords.
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            a.update(a.pop(name, {}))
    if a.get("batch_size") is not None:
        check_int("batch_size", a["batch_size"])
    a["x"] = checked_features(a["x"], "x", a.get("batch_size") or 32)
    a["y"] = geo.check_gps_array(a["y"], "y")
    return a


def check_feature_size(model, builder):
    """Refuses a stored-features data set whose features are not the size
    that `model`'s image encoder was built for (a `ValueError` naming
    both), before any step runs or file is written; an unbuilt model
    passes (it is built on the first batch)."""
    size = builder.info.features["features"].shape[-1]
    shape = getattr(model, "image_input_shape", None)
    wanted = shape[-1] if shape else None
    if wanted is not None and wanted != size:
        raise ValueError(
            f"`builder` {builder.info.full_name!r} stores image features "
            f"of size {size}, but `model` was built for features of size "
            f"{wanted} (input shape {shape}): use a model built for "
            f"(None, {size}), or the features of the backbone the model "
            "was built for."
        )
