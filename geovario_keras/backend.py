"""Every backend-specific piece of geovario-keras, chosen once at import.

The rest of the package is written in `keras.ops`. The few places where the
backends really differ are collected here, behind one function each, and
resolved when this module is imported (`KERAS_BACKEND` cannot change inside
a process):

- `is_tensor(x)`: a concrete backend tensor (not a symbolic `KerasTensor`).
- `inference_function(layer, fn, jit_compile)`: `fn(layer, x)` compiled for
  inference, reading the layer's current weights.
- `traced_function(fn)`: `fn` traced for repeated calls where tracing reads
  variables live (TensorFlow), else `fn` itself.
- `segment_sum(values, index, num_segments)`: per-segment sums (the
  semivariogram's per-bin statistics).
- `dense_relu(dense, x)`: a ReLU `Dense` layer's forward pass.

Only `geovario_keras.export` also looks at the backend, because exporting a
SavedModel is itself backend-specific.
"""

import keras
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


def traced_function(fn):
    """`fn` as a reusable traced function where that is safe and faster.

    TensorFlow: a `tf.function` (it reads variables live, so new values are
    seen; a variable *replaced* by another object is not, so callers key
    their cache on the variables). JAX and PyTorch: `fn` itself, since a
    `jax.jit` here would freeze the variable values it traced.
    """
    if NAME != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn, reduce_retracing=True)


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
