"""Inference: compiled functions reading a layer's weights, and tensors
that share host memory (the package's `backend.inference_function`,
`inference_devices`, `distributed_batch`, `shared_host_tensor`,
`host_array`, `is_tensor`)."""

import math

import keras
import numpy as np
from keras import ops

from geovario_keras.backend import NAME


def is_tensor(x):
    """True for a concrete tensor of the current backend (not symbolic)."""
    return ops.is_tensor(x) and not isinstance(x, keras.KerasTensor)


def host_array(x):
    """`x` as a numpy array: arrays as they are (no copy), lists made
    arrays, a backend tensor copied to the host. Keras's
    `convert_to_numpy` sends an array through a backend tensor first: a
    whole copy (on a GPU, to the device and back)."""
    if is_tensor(x):
        return np.asarray(ops.convert_to_numpy(x))
    return np.asarray(x)


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
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))
