"""Operations of the training step that differ by backend: per-segment
sums, constants, gradient-free parts compiled apart, powers, the GPS
noise's random steps, a ReLU `Dense` layer (`backend.segment_sum`,
`constant`, `fused`, `power`, `gaussian_steps`, `dense_relu`)."""

import contextlib
import math
import threading
import weakref

import keras
import numpy as np
from keras import ops

from geovario_keras.backend import NAME

_CHUNKS = 32


def segment_sum(values, index, num_segments):
    """Sums `values` per segment `index` in `[0, num_segments)`.

    PyTorch: eagerly, a weighted `bincount`, several times faster there
    than `segment_sum`'s scatter (BENCHMARKS.md); inside `torch.compile`,
    `index_add`s into 32 copies of the segments, then summed (a
    `bincount`'s shape depends on the data, which would split the compiled
    step). The order of the additions, and so a float sum's last bits, may
    differ between the two. Others: `ops.segment_sum`, whose static
    segment count compiled JAX and XLA need.
    """
    if NAME == "torch":
        import torch

        if torch.compiler.is_compiling():
            # Per chunk of the values, then over the chunks: inductor's
            # scatter-add is an atomic add, and threads adding into the
            # same few segments wait on each other (BENCHMARKS.md).
            values = ops.convert_to_tensor(values)
            index = ops.convert_to_tensor(index)
            size = index.shape[0]
            chunk = torch.arange(size, device=index.device) * _CHUNKS
            chunk = chunk // max(size, 1)
            out = torch.zeros(
                (_CHUNKS * num_segments,),
                dtype=values.dtype,
                device=values.device,
            )
            out = out.index_add(0, index + chunk * num_segments, values)
            return out.reshape(_CHUNKS, num_segments).sum(0)
        return ops.bincount(index, weights=values, minlength=num_segments)[
            :num_segments
        ]
    return ops.segment_sum(values, index, num_segments=num_segments)


def constant(values, dtype, like):
    """A list of Python numbers as a constant tensor on `like`'s device.

    PyTorch: `torch.tensor(values)`, which `torch.compile` folds into its
    graph (Keras's `convert_to_tensor` of an array would split a compiled
    step). Others: `ops.convert_to_tensor`.
    """
    if NAME == "torch":
        import torch

        dtype = getattr(torch, dtype)
        return torch.tensor(list(values), dtype=dtype, device=like.device)
    return ops.convert_to_tensor(np.asarray(values), dtype)


_FUSED = weakref.WeakKeyDictionary()


def fused(method):
    """`method` (a bound method, a function of tensors without gradients)
    compiled to fused kernels where the step would otherwise run it
    operator by operator.

    TensorFlow: `tf.function(method, jit_compile=True)` (XLA), one compiled
    call in the step's graph instead of an executor pass per operator;
    made once per object. JAX (already XLA) and PyTorch (compiled whole or
    eager, per the model's `jit_compile`): `method` itself.
    """
    if NAME != "tensorflow":
        return method
    import tensorflow as tf

    owner, func = method.__self__, method.__func__
    per_object = _FUSED.setdefault(owner, {})
    if func not in per_object:
        # A function of the tensors only; the object is held weakly (and
        # is not an attribute of it: a SavedModel would export it).
        ref = weakref.ref(owner)

        def traced(*tensors):
            with _tracing_for_xla():
                return func(ref(), *tensors)

        per_object[func] = tf.function(
            traced, jit_compile=True, reduce_retracing=True
        )
    return per_object[func]


_XLA = threading.local()


@contextlib.contextmanager
def _tracing_for_xla():
    before = getattr(_XLA, "active", False)
    _XLA.active = True
    try:
        yield
    finally:
        _XLA.active = before


def xla_formulation():
    """Whether the operations being traced will run as XLA fusions: always
    on JAX, and on TensorFlow inside a `fused` call. There, many cheap
    elementwise operations cost less than one of XLA's CPU `arcsin`,
    `power` or table lookups (BENCHMARKS.md)."""
    return NAME == "jax" or getattr(_XLA, "active", False)


def power(x, exponent):
    """`x ** exponent` for `x >= 0` and a scalar tensor `exponent`.

    Under XLA (JAX, TensorFlow's `fused` calls): `exp(exponent * log(x))`
    (`0 ** exponent` where x is 0): XLA's `power` with a tensor exponent
    costs ~3x an `exp` and a `log` on the CPU (BENCHMARKS.md). Otherwise
    `ops.power`, one operator where every operator is a pass of its own.
    """
    if not xla_formulation():
        return ops.power(x, exponent)
    powered = ops.exp(exponent * ops.log(ops.maximum(x, 1e-30)))
    at_zero = ops.where(exponent > 0.0, 0.0, 1.0)
    return ops.where(x > 0.0, powered, at_zero)


_MASK32 = 0xFFFFFFFF


def _pcg_hash(x):
    # The PCG hash (Jarzynski & Olano, "Hash functions for GPU rendering",
    # JCGT 2020) of 32-bit values held in int64: multipliers below 2**31 so
    # that no product overflows 63 bits.
    state = (x * 747796405 + 2891336453) & _MASK32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & _MASK32
    return (word >> 22) ^ word


def _torch_gaussian_steps(sizes, stddevs, seed_generator):
    # Counter-based draws: uniform number k of a call is a hash of k and of
    # the seed generator's state, in plain tensor operations, so that
    # `torch.compile` traces them (Keras's torch sampler builds a
    # `torch.Generator` in a function excluded from compilation: the step
    # would split into several graphs). Box-Muller in polar form gives the
    # step's length (Rayleigh) and bearing (uniform) directly.
    import torch

    # `SeedGenerator.next()` (state + [0, 1]) without its numpy constant,
    # which `torch.compile` cannot trace.
    state = seed_generator.state.value
    seed_generator.state.assign(
        state + torch.arange(2, dtype=state.dtype, device=state.device)
    )
    seed = state.to(torch.int64) & _MASK32
    key = _pcg_hash(_pcg_hash(seed[0]) ^ seed[1])
    count = sum(sizes)
    k = torch.arange(2 * count, device=seed.device, dtype=torch.int64)
    bits = _pcg_hash(_pcg_hash(k) ^ key) >> 8  # 24 random bits each
    u = bits.to(torch.float32).reshape(count, 2) * 2.0**-24
    length = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u in (0, 1]
    sigma = torch.cat(
        [
            torch.full((n,), float(s), device=seed.device)
            for n, s in zip(sizes, stddevs)
        ]
    )
    return length * sigma, (2.0 * math.pi) * u[:, 1]


def gaussian_steps(sizes, stddevs, seed=None):
    """Lengths and bearings of isotropic 2-D Gaussian steps.

    Block `i` has `sizes[i]` steps whose (north, east) components are
    independent normals of standard deviation `stddevs[i]`: the length
    follows a Rayleigh law of scale `stddevs[i]` and the bearing is
    uniform.

    PyTorch with a `keras.random.SeedGenerator`: drawn from a counter-based
    hash of the generator's state (plain tensor operations, so a training
    step compiled with `torch.compile` stays one graph). Otherwise: the
    components drawn by `keras.random.normal`, block by block.

    Args:
        sizes: list of ints (or symbolic sizes), steps per block.
        stddevs: list of floats >= 0, one per block.
        seed: a `keras.random.SeedGenerator`, an int or None.

    Returns:
        `(length, bearing)`: float32 tensors `(sum(sizes),)`, the bearing
        in radians clockwise from north.
    """
    if NAME == "torch" and isinstance(seed, keras.random.SeedGenerator):
        return _torch_gaussian_steps(sizes, stddevs, seed)
    draws = []
    for size, stddev in zip(sizes, stddevs):
        if stddev:
            draws.append(
                keras.random.normal((size, 2), stddev=stddev, seed=seed)
            )
        else:
            draws.append(ops.zeros((size, 2), "float32"))
    d = draws[0] if len(draws) == 1 else ops.concatenate(draws, 0)
    north, east = d[:, 0], d[:, 1]
    return ops.sqrt(north * north + east * east), ops.arctan2(east, north)


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
