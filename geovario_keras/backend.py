"""Every backend-specific piece of geovario-keras, chosen once at import.

The rest of the package is written in `keras.ops`. The few places where the
backends really differ are collected here, behind one function each, and
resolved when this module is imported (`KERAS_BACKEND` cannot change inside
a process):

- `is_tensor(x)`: a concrete backend tensor (not a symbolic `KerasTensor`).
- `shared_host_tensor(array)`: a numpy array as a tensor without a copy
  where the backend allows (large galleries).
- `inference_function(layer, fn, jit_compile)`: `fn(layer, x)` compiled for
  inference, reading the layer's current weights.
- `inference_devices()`, `distributed_batch(array)`: a batch split over
  the devices of a `keras.distribution` (JAX) for such a function.
- `segment_sum(values, index, num_segments)`: per-segment sums (the
  semivariogram's per-bin statistics).
- `dense_relu(dense, x)`: a ReLU `Dense` layer's forward pass.
- `state_kept_on_error(model)`: on JAX, a `fit`/`evaluate` that raises
  mid-epoch (a bad batch) leaves the model's variables readable.
- `fresh_order_arguments(fit_arguments)`: in-memory training arrays in a
  new order every epoch (TensorFlow: Keras's array adapter repeats its
  first order when a global seed is set).
- `replica_count()`, `gather_replicas(*values)`, `check_distribution()`:
  data-parallel training with global negatives (JAX: `keras.distribution`,
  where XLA already sees the global batch; TensorFlow: `tf.distribute`,
  where each replica gathers the others' shards; PyTorch: refused).

Only `geovario_keras.export` also looks at the backend, because exporting a
SavedModel is itself backend-specific.
"""

import contextlib
import math
import random

import keras
import numpy as np
from keras import ops

NAME = keras.backend.backend()


def is_tensor(x):
    """True for a concrete tensor of the current backend (not symbolic)."""
    return ops.is_tensor(x) and not isinstance(x, keras.KerasTensor)


# ------------------------------------------------------------ inference
def _jax_inference_function(layer, fn, jit_compile):
    import jax

    # One `jax.jit` that takes the variable values as arguments, so each
    # call sees the current weights (a jitted closure would freeze them).
    def stateless(trainable, non_trainable, x):
        mapping = list(zip(layer.trainable_variables, trainable))
        mapping += zip(layer.non_trainable_variables, non_trainable)
        with keras.StatelessScope(state_mapping=mapping):
            return fn(layer, x)

    jitted = jax.jit(stateless)

    def call(x):
        return jitted(
            [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables],
            x,
        )

    return call


def _tensorflow_inference_function(layer, fn, jit_compile):
    import tensorflow as tf

    # A `tf.function` reads variables live. XLA only when asked for
    # (`compile(jit_compile=True)`; Keras's "auto" asks only with a GPU):
    # on CPUs the plain graph was the faster (BENCHMARKS.md).
    return tf.function(
        lambda x: fn(layer, x),
        jit_compile=jit_compile is True,
        reduce_retracing=True,
    )


def _torch_inference_function(layer, fn, jit_compile):
    import torch

    def call(x):
        with torch.no_grad():
            return fn(layer, x)

    return call


def _eager_inference_function(layer, fn, jit_compile):
    return lambda x: fn(layer, x)


_INFERENCE = {
    "jax": _jax_inference_function,
    "tensorflow": _tensorflow_inference_function,
    "torch": _torch_inference_function,
}


def inference_function(layer, fn, jit_compile=None):
    """`x -> fn(layer, x)`, compiled for inference on this backend.

    JAX: one `jax.jit` taking the variable values as arguments (always the
    current weights). TensorFlow: a `tf.function`, with XLA iff
    `jit_compile is True`. PyTorch: eager under `torch.no_grad()`.

    Args:
        layer: a built Keras layer whose variables `fn` reads.
        fn: `fn(layer, x) -> tensor`, traceable.
        jit_compile: the model's `jit_compile` setting (TensorFlow only).

    Returns:
        A callable taking one tensor.
    """
    make = _INFERENCE.get(NAME, _eager_inference_function)
    return make(layer, fn, jit_compile)


def inference_devices():
    """Devices an inference batch is split over: those of the data axis of
    the `keras.distribution` set on JAX (e.g. `DataParallel()`: every
    local accelerator), else 1 (the backend's default device)."""
    distribution = keras.distribution.distribution()
    if NAME != "jax" or distribution is None:
        return 1
    layout = distribution.get_data_layout((None, 1))
    return int(math.prod(layout.device_mesh.shape))


def distributed_batch(array):
    """A numpy batch as a tensor, split along its first axis over
    `inference_devices()`. On JAX with a `keras.distribution` set, an
    `inference_function` then runs on every device at once (XLA partitions
    the call; weights are replicated to the devices); elsewhere, the
    backend's default device. The batch size must be a multiple of
    `inference_devices()`."""
    if inference_devices() == 1:
        return ops.convert_to_tensor(array)
    import jax

    layout = keras.distribution.distribution().get_data_layout(array.shape)
    return jax.device_put(array, layout.backend_layout)


def shared_host_tensor(array):
    """A float numpy array as a tensor sharing its memory where possible.

    PyTorch: `torch.from_numpy` (Keras's `convert_to_tensor` copies numpy
    arrays first; for a gallery of millions that is a second host copy).
    JAX already shares aligned host arrays on the CPU; elsewhere the array
    itself is returned and converted as usual.
    """
    if NAME != "torch":
        return array
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


# ------------------------------------------------------------- training
def segment_sum(values, index, num_segments):
    """Sums `values` per segment `index` in `[0, num_segments)`.

    PyTorch: a weighted `bincount`, several times faster there than
    `segment_sum`'s scatter (BENCHMARKS.md). Others: `ops.segment_sum`,
    whose static segment count compiled JAX and XLA need.
    """
    if NAME == "torch":
        return ops.bincount(index, weights=values, minlength=num_segments)[
            :num_segments
        ]
    return ops.segment_sum(values, index, num_segments=num_segments)


def _can_fuse(dense):
    return (
        dense.bias is not None
        and dense.activation is keras.activations.relu
        and dense.quantization_mode is None
    )


def _torch_dense_relu(dense, x):
    # One `addmm` (bias fused into the matmul, as torch.nn.Linear does) and
    # an in-place ReLU, where Keras's Dense runs matmul, add and relu as
    # three passes. `convert_to_tensor` reads a variable's auto-cast value,
    # and also takes the merged tensor that `Dense.kernel` returns under
    # LoRA. Autograd supports both ops.
    import torch

    if not _can_fuse(dense):
        return dense(x)
    kernel = ops.convert_to_tensor(dense.kernel)
    bias = ops.convert_to_tensor(dense.bias)
    return torch.relu_(torch.addmm(bias, x, kernel))


def _call_dense(dense, x):
    return dense(x)


_DENSE_RELU = _torch_dense_relu if NAME == "torch" else _call_dense


def dense_relu(dense, x):
    """`dense(x)` for a ReLU `Dense` layer; one fused kernel on PyTorch."""
    return _DENSE_RELU(dense, x)


# --------------------------------------------------------- failed steps
def _model_variables(model):
    found = list(model.variables) + list(model.metrics_variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        found += list(optimizer.variables)
    return list({id(v): v for v in found}.values())


@contextlib.contextmanager
def state_kept_on_error(model):
    """Keeps `model`'s variables readable when `fit`/`evaluate` raises.

    JAX's Keras trainer detaches the variables' values while it trains
    (they travel through the jitted steps) and attaches the new ones at the
    end of an epoch. An exception before that, for instance a bad batch
    refused by `checked_features`, left every variable without a value:
    the model could no longer be read, saved or trained. On the way out of
    such an exception the last state the trainer holds is attached (the
    steps that ran count), else the values from before the call. Other
    backends keep their variables in place: nothing to do there.
    """
    if NAME != "jax":
        yield
        return
    before = [(v, v._value) for v in _model_variables(model)]
    try:
        yield
    except BaseException:
        if getattr(model, "_jax_state", None):
            model.jax_state_sync()
        for variable, value in before:
            if variable._value is None and value is not None:
                variable.assign(value)
        raise


# ----------------------------------------------------------- data order
def _is_array(x):
    return isinstance(x, np.ndarray) or is_tensor(x)


def _rows(x):
    return int(keras.tree.flatten(x)[0].shape[0])


def _take(arrays, start, stop):
    return keras.tree.map_structure(lambda t: t[start:stop], arrays)


def _tf_fresh_order(arrays, batch_size):
    """`arrays` as a `tf.data.Dataset` of batches in a new order per epoch.

    The shuffle of row indices has a seed drawn from Python's `random`
    (which `keras.utils.set_random_seed` sets) and reshuffles at every
    iteration, i.e. every epoch: a new permutation each epoch, the same
    sequence of permutations for the same seed.
    """
    import tensorflow as tf

    n = _rows(arrays)
    order = tf.data.Dataset.range(n).shuffle(
        n, seed=random.randint(0, 2**31 - 1), reshuffle_each_iteration=True
    )
    data = tf.data.Dataset.from_tensors(arrays).repeat()

    def gather(indices, values):
        return tf.nest.map_structure(lambda t: tf.gather(t, indices), values)

    dataset = tf.data.Dataset.zip((order.batch(batch_size), data))
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def fresh_order_arguments(a):
    """`fit`'s bound arguments `a`, fed in a new order every epoch.

    On TensorFlow, Keras's array adapter draws each epoch's permutation with
    an unseeded `tf.random.shuffle` inside a data set that is iterated anew
    each epoch; once a global seed is set (`keras.utils.set_random_seed`,
    as reproducible notebooks do), every epoch replays the first epoch's
    order, and the same batches meet the same queue negatives each epoch.
    For in-memory arrays with `shuffle=True` this hands Keras a `tf.data`
    pipeline that reshuffles every epoch instead (`validation_split` is
    applied first, to the last rows, as Keras does). JAX and PyTorch draw a
    new order per epoch already: `a` is returned unchanged there, and for
    data sets, generators, `shuffle=False`/`"batch"` or `class_weight`.
    """
    arrays = [a.get("x"), a.get("y")]
    if a.get("sample_weight") is not None:
        arrays.append(a["sample_weight"])
    if (
        NAME != "tensorflow"
        or a.get("shuffle", True) is not True
        or a.get("class_weight") is not None
        or not all(_is_array(t) for t in keras.tree.flatten(arrays))
    ):
        return a
    arrays = tuple(arrays)
    split = a.pop("validation_split", None) or 0.0
    if split and a.get("validation_data") is None:
        at = int(math.floor(_rows(arrays) * (1.0 - split)))
        a["validation_data"] = _take(arrays, at, None)
        arrays = _take(arrays, 0, at)
    a["x"] = _tf_fresh_order(arrays, a.pop("batch_size", None) or 32)
    for name in ("y", "sample_weight"):
        a.pop(name, None)
    a["shuffle"] = False  # the data set shuffles itself (Keras would warn)
    return a


# --------------------------------------------------------- distribution
def _tf_replica_context():
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replica_count():
    """Replicas whose shards make up one global batch in this step.

    TensorFlow: the `tf.distribute` strategy's `num_replicas_in_sync`.
    JAX (`keras.distribution`) and PyTorch: 1, since the step sees the
    global batch.
    """
    if NAME != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def gather_replicas(*values):
    """Every replica's shard of each value, concatenated along axis 0.

    Under a `tf.distribute` strategy with several replicas (inside the
    replica context of a training step), `all_gather` in replica order,
    so the result is the global batch in its original order; gradients flow
    back to each replica's own shard. Elsewhere, and for `None` values,
    the values are returned unchanged: on JAX a `keras.distribution` step
    already computes on the global (sharded) batch.

    Returns:
        A tuple of the gathered values.
    """
    if NAME != "tensorflow" or _tf_replica_context() is None:
        return values
    present = [v for v in values if v is not None]
    gathered = iter(_tf_replica_context().all_gather(present, axis=0))
    return tuple(None if v is None else next(gathered) for v in values)


_TORCH_DISTRIBUTION = (
    "GeoCLIP cannot train data-parallel on the PyTorch backend: Keras {} "
    "has no PyTorch implementation of `keras.distribution`{}, and training "
    "one model per process (e.g. torch DistributedDataParallel) would "
    "contrast each image only with its own process's shard of the batch "
    "(per-replica negatives), a weaker objective than the single-device "
    "one. Train data-parallel with KERAS_BACKEND=jax "
    "(`keras.distribution.DataParallel`) or KERAS_BACKEND=tensorflow "
    "(`tf.distribute.MirroredStrategy`), or on one device with PyTorch."
)


def check_distribution():
    """Raises a `RuntimeError` for data-parallel set-ups that would not
    train the single-device objective.

    - PyTorch with a `keras.distribution` set (Keras has no PyTorch
      implementation; it would be ignored) or inside a
      `torch.distributed` process group of more than one process.
    - TensorFlow with a `keras.distribution` set (use `tf.distribute`).
    """
    import keras

    distribution = keras.distribution.distribution()
    if NAME == "torch":
        import torch.distributed as dist

        if distribution is not None:
            raise RuntimeError(
                _TORCH_DISTRIBUTION.format(
                    keras.__version__, f" (found {distribution!r} set)"
                )
            )
        if dist.is_available() and dist.is_initialized():
            if dist.get_world_size() > 1:
                raise RuntimeError(
                    _TORCH_DISTRIBUTION.format(
                        keras.__version__,
                        " (found a torch.distributed process group of "
                        f"{dist.get_world_size()} processes)",
                    )
                )
    elif NAME == "tensorflow" and distribution is not None:
        raise RuntimeError(
            "GeoCLIP trains data-parallel on TensorFlow with "
            "`tf.distribute.MirroredStrategy` (build and compile the model "
            "under `strategy.scope()`); `keras.distribution` "
            f"(found {distribution!r} set) is JAX's route in Keras "
            f"{keras.__version__}."
        )
