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
- `constant(values, dtype, like)`: a list of numbers as a constant
  tensor, also inside a compiled PyTorch step.
- `NATIVE_ARCSIN`, `NATIVE_DIGITIZE`, `CHORD_DISTANCES`: the fast
  formulation of the semivariogram's per-pair work on this backend.
- `gaussian_steps(sizes, stddevs, seed)`: lengths and bearings of 2-D
  Gaussian steps (the GPS training noise), drawn on PyTorch without
  leaving a compiled step.
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
- `data_parallel(job_addresses, num_processes, process_id)`,
  `process_index()`, `process_count()`, `data_parallel_strategy()`,
  `lost_process_errors()`: a job of several processes (JAX
  `jax.distributed`, TensorFlow `MultiWorkerMirroredStrategy`), or every
  local device of one.
- `symbolic_build_batch(epoch_iterator)`, `worker_logs(logs)`: what Keras
  3.15's TensorFlow trainer needs to train under several workers.

Only `geovario_keras.export` also looks at the backend, because exporting a
SavedModel is itself backend-specific.
"""

import contextlib
import json
import math
import os
import random

import keras
import numpy as np
from keras import ops

NAME = keras.backend.backend()

# Whether `ops.arcsin` and `ops.digitize` are fast on this backend's CPU
# kernels (the semivariogram's per-pair distances and bins): XLA's are not
# (JAX; TensorFlow's graph `asin` is, its `Bucketize` is not). Otherwise
# the package uses a polynomial and a table lookup (BENCHMARKS.md,
# "Measurements behind the code").
NATIVE_ARCSIN = NAME != "jax"
NATIVE_DIGITIZE = NAME == "torch"
# Pairwise great-circle distances from unit-vector chords (trigonometry per
# point) rather than from coordinate differences (per pair): faster under
# XLA and TensorFlow's graphs, slower in PyTorch's eager broadcasting.
CHORD_DISTANCES = NAME != "torch"


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

    PyTorch: eagerly, a weighted `bincount`, several times faster there
    than `segment_sum`'s scatter (BENCHMARKS.md); inside `torch.compile`, an
    `index_add` (a `bincount`'s shape depends on the data, which would
    split the compiled step). Others: `ops.segment_sum`, whose static
    segment count compiled JAX and XLA need.
    """
    if NAME == "torch":
        import torch

        if torch.compiler.is_compiling():
            values = ops.convert_to_tensor(values)
            out = torch.zeros(
                (num_segments,), dtype=values.dtype, device=values.device
            )
            return out.index_add(0, ops.convert_to_tensor(index), values)
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
    # One `all_gather` per value: under `MultiWorkerMirroredStrategy` the
    # gradient of a gather of several values of different shapes fails
    # (TensorFlow 2.21 packs their gradients into one tensor).
    # In a graph, a value from the input pipeline may carry no device, which
    # `MultiWorkerMirroredStrategy`'s gather refuses: place it on the
    # replica's device first.
    import tensorflow as tf

    context = _tf_replica_context()
    local = tf.distribute.get_strategy().extended.worker_devices
    replica = tf.get_static_value(context.replica_id_in_sync_group)
    device = None if replica is None else local[int(replica) % len(local)]

    def gather(v):
        if device is not None:
            with tf.device(device):
                v = tf.identity(v)
        return context.all_gather(v, axis=0)

    return tuple(None if v is None else gather(v) for v in values)


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


# ------------------------------------------------------ several processes
_PROCESSES = {}  # what `data_parallel` set up in this process


def _addresses(job_addresses):
    if job_addresses is None:
        return []
    if isinstance(job_addresses, str):
        job_addresses = job_addresses.split(",")
    found = [a.strip() for a in job_addresses if a.strip()]
    for address in found:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                "`job_addresses` must be 'host:port' entries separated by "
                f"commas (the first is the coordinator); got {address!r}."
            )
    return found


def _multi_process_arguments(job_addresses, num_processes, process_id):
    """The job's addresses, size and this process's id, from the arguments
    or Keras's environment variables; checked."""
    env = os.environ
    if job_addresses is None:
        job_addresses = env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
    if num_processes is None and env.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        num_processes = int(env["KERAS_DISTRIBUTION_NUM_PROCESSES"])
    if process_id is None and env.get("KERAS_DISTRIBUTION_PROCESS_ID"):
        process_id = int(env["KERAS_DISTRIBUTION_PROCESS_ID"])
    addresses = _addresses(job_addresses)
    if not addresses:
        return None
    if num_processes is None:
        num_processes = len(addresses)
    num_processes = int(num_processes)
    if num_processes < 1:
        raise ValueError(f"`num_processes` must be >= 1; got {num_processes}.")
    if NAME == "tensorflow" and len(addresses) != num_processes:
        raise ValueError(
            "TensorFlow needs every process's address: `job_addresses` has "
            f"{len(addresses)} for `num_processes`={num_processes}."
        )
    if len(addresses) not in (1, num_processes):
        raise ValueError(
            f"`job_addresses` has {len(addresses)} addresses for "
            f"`num_processes`={num_processes}: give the coordinator's alone "
            "(JAX) or one per process."
        )
    if process_id is None or not 0 <= int(process_id) < num_processes:
        raise ValueError(
            f"`process_id` must be in [0, {num_processes - 1}] for a job of "
            f"{num_processes} processes; got {process_id}."
        )
    return addresses, num_processes, int(process_id)


def data_parallel(
    job_addresses=None,
    num_processes=None,
    process_id=None,
    failure_timeout_s=100,
):
    """Sets up data-parallel training with global negatives; returns the
    scope to build, compile and `fit` the model in.

    On one process (no `job_addresses`), every local device. With
    `job_addresses`, this process joins a job of `num_processes` processes
    (one per host, or one per GPU): start the same program on each with
    its `process_id` (0 is the coordinator, which also writes the
    checkpoints of `gv.training.StepCheckpoint`). Call it first, before
    anything else runs on the backend. Missing arguments are read from
    Keras's variables `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`.

    - JAX: `jax.distributed.initialize` (the first address is the
      coordinator's; on CPU the processes exchange tensors through gloo),
      then `keras.distribution.DataParallel` over the devices of every
      process. Feed a `tf.data.Dataset` batched at the global batch size:
      Keras gives each process its share of every batch.
    - TensorFlow: `tf.distribute.MultiWorkerMirroredStrategy` (one address
      per process, in process order; a `TF_CONFIG` already set is used as
      it is), or `MirroredStrategy` on one process. Each process reads the
      global batches and keeps its share (`tf.data` auto-sharding by data).
    - PyTorch: a `RuntimeError` (Keras has no PyTorch implementation of
      `keras.distribution`).

    A process that dies stops the others with an error after at most
    `failure_timeout_s` seconds (no hang); rerun the job to resume from the
    last checkpoint.

    Args:
        job_addresses: str "host:port,host:port,..." or a list; None for
            one process.
        num_processes: int >= 1; defaults to the number of addresses.
        process_id: int in [0, num_processes - 1].
        failure_timeout_s: int >= 1. Seconds without a sign of life from a
            process after which the job stops.

    Returns:
        A context manager (the strategy's scope on TensorFlow).

    Example (two processes on one machine; in a notebook, the single-
    process form `gv.backend.data_parallel()`):

    ```python
    # process 0                                  # process 1
    scope = gv.backend.data_parallel(            # the same, with
        "10.0.0.1:1234,10.0.0.2:1234",           # process_id=1
        process_id=0)
    with scope:
        model = gv.GeoCLIP(...)
        model.compile(optimizer="adam",
                      loss=gv.losses.SemivariogramContrastiveLoss())
    model.fit(dataset_of_global_batches, ...)
    ```
    """
    if int(failure_timeout_s) < 1:
        raise ValueError(
            f"`failure_timeout_s` must be >= 1; got {failure_timeout_s}."
        )
    job = _multi_process_arguments(job_addresses, num_processes, process_id)
    if NAME == "torch":
        raise RuntimeError(_TORCH_DISTRIBUTION.format(keras.__version__, ""))
    if NAME == "jax":
        import jax

        if job is not None and "jax" not in _PROCESSES:
            addresses, count, index = job
            # CPU devices of several processes talk through gloo (GPUs use
            # NCCL whatever this says).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                coordinator_address=addresses[0],
                num_processes=count,
                process_id=index,
                heartbeat_timeout_seconds=int(failure_timeout_s),
            )
            _PROCESSES["jax"] = job
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        return contextlib.nullcontext()
    import tensorflow as tf

    if "tensorflow" in _PROCESSES:
        return _PROCESSES["tensorflow"].scope()
    if job is None and "TF_CONFIG" not in os.environ:
        strategy = tf.distribute.MirroredStrategy()
    else:
        if job is not None and "TF_CONFIG" not in os.environ:
            addresses, _, index = job
            os.environ["TF_CONFIG"] = json.dumps(
                {
                    "cluster": {"worker": addresses},
                    "task": {"type": "worker", "index": index},
                }
            )
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(failure_timeout_s)
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=options
        )
    _PROCESSES["tensorflow"] = strategy
    return strategy.scope()


def _tf_config():
    """`(task, cluster)` of the `TF_CONFIG` variable (empty dicts alone)."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    return config.get("task", {}), config.get("cluster", {})


def process_index():
    """This process's index in a job of several processes (0 alone).

    JAX: `jax.process_index()`. TensorFlow: the worker index of `TF_CONFIG`
    (the chief's, 0, when it has a chief). PyTorch: 0.
    """
    if NAME == "jax":
        import jax

        return jax.process_index()
    if NAME == "tensorflow":
        task, cluster = _tf_config()
        if task.get("type") == "chief":
            return 0
        return int(task.get("index", 0)) + (1 if cluster.get("chief") else 0)
    return 0


def process_count():
    """Processes in this job (1 alone)."""
    if NAME == "jax":
        import jax

        return jax.process_count()
    if NAME == "tensorflow":
        _, cluster = _tf_config()
        count = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        return max(count, 1)
    return 1


def symbolic_build_batch(epoch_iterator):
    """The shapes and dtypes of a batch of a Keras `fit`/`evaluate` epoch
    iterator, read from its data set without drawing a batch; None where
    Keras does not draw one to build the model.

    TensorFlow under a `tf.distribute` strategy: Keras 3.15's
    `_maybe_symbolic_build` draws a batch and averages it across replicas
    to build the model, which fails under `MultiWorkerMirroredStrategy`
    with several workers. The data set's element spec is enough to build.
    """
    if NAME != "tensorflow" or epoch_iterator is None:
        return None
    adapter = getattr(epoch_iterator, "data_adapter", None)
    if adapter is None:
        return None
    dataset = adapter.get_tf_dataset()
    return getattr(dataset, "element_spec", None)


def _multi_worker_strategy():
    """The `MultiWorkerMirroredStrategy` of this step, with several workers;
    else None."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        if strategy.extended._in_multi_worker_mode():
            return strategy
    return None


def worker_logs(logs):
    """A training or test step's logs, ready for Keras to average across
    the workers of a `MultiWorkerMirroredStrategy`.

    Keras 3.15 averages each log over axis 0 of the workers' values, which
    fails for scalars: under several workers they become 1-element vectors
    (the average is a scalar again). Unchanged elsewhere.
    """
    if NAME != "tensorflow" or _multi_worker_strategy() is None:
        return logs
    import tensorflow as tf

    def vector(v):
        v = tf.convert_to_tensor(v)
        return tf.reshape(v, [1]) if v.shape.rank == 0 else v

    return keras.tree.map_structure(vector, logs)


def data_parallel_strategy():
    """TensorFlow: the `tf.distribute` strategy `data_parallel` made (None
    before it, and on the other backends)."""
    return _PROCESSES.get("tensorflow")


@contextlib.contextmanager
def lost_process_errors():
    """In a job of several TensorFlow processes, the error of a collective
    that failed because a process stopped becomes a `RuntimeError` saying
    so (JAX's coordination service ends the process with its own message,
    "another task died")."""
    if NAME != "tensorflow" or process_count() == 1:
        yield
        return
    import tensorflow as tf

    lost = (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
    )
    try:
        yield
    except lost as e:
        first = str(getattr(e, "message", e)).strip().splitlines()
        raise RuntimeError(
            f"A process of this job of {process_count()} processes stopped "
            "or could not be reached, so this one stopped too "
            f"({type(e).__name__}: {first[0] if first else ''}). Start the "
            "job again with the same arguments; with checkpoints "
            "(gv.training.StepCheckpoint, fit_resumable) it resumes from "
            "the last one."
        ) from e
