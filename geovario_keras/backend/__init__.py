"""Every backend-specific piece of geovario-keras, chosen once at import.

The rest of the package is written in `keras.ops`. The few places where the
backends really differ are collected here, behind one function each, and
resolved when this module is imported (`KERAS_BACKEND` cannot change inside
a process):

- `is_tensor(x)`: a concrete backend tensor (not a symbolic `KerasTensor`).
- `host_array(x)`: a numpy array without a copy of an array (tensors are
  copied to the host).
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
- `fused(method)`: a gradient-free part of the step compiled to fused
  kernels (TensorFlow: XLA inside the step's graph);
  `xla_formulation()`: whether what is being traced runs under XLA (JAX,
  or inside such a call), where many cheap elementwise operations cost
  less than one table lookup, general power or `arcsin`.
- `power(x, exponent)`: `x ** exponent` with a tensor exponent (the
  variogram's shape).
- `gaussian_steps(sizes, stddevs, seed)`: lengths and bearings of 2-D
  Gaussian steps (the GPS training noise), drawn on PyTorch without
  leaving a compiled step.
- `dense_relu(dense, x)`: a ReLU `Dense` layer's forward pass.
- `step_function(function)`: Keras's compiled training, test or predict
  step; on PyTorch without TorchDynamo's per-call checks of the layers'
  attributes (traced once, as on JAX and TensorFlow).
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
- `symbolic_build_batch(epoch_iterator, strategy)`, `worker_logs(logs)`:
  what Keras 3.15's TensorFlow trainer needs to train under several
  workers.

The functions live in four modules, one job each, and are all importable
from here: `inference` (compiled inference functions, host tensors),
`step_ops` (operations of the training step), `fit` (what `GeoCLIP.fit`
needs per backend) and `distribution` (replicas and jobs of several
processes). `NAME` and the flags above are set here, before them.

Only `geovario_keras.export` also looks at the backend, because exporting a
SavedModel is itself backend-specific.
"""

import keras

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

# The submodules read NAME from here: it is set before they are imported.
from geovario_keras.backend.distribution import check_distribution  # noqa: E402
from geovario_keras.backend.distribution import data_parallel  # noqa: E402
from geovario_keras.backend.distribution import data_parallel_strategy  # noqa: E402
from geovario_keras.backend.distribution import gather_replicas  # noqa: E402
from geovario_keras.backend.distribution import lost_process_errors  # noqa: E402
from geovario_keras.backend.distribution import process_count  # noqa: E402
from geovario_keras.backend.distribution import process_index  # noqa: E402
from geovario_keras.backend.distribution import replica_count  # noqa: E402
from geovario_keras.backend.distribution import symbolic_build_batch  # noqa: E402
from geovario_keras.backend.distribution import worker_logs  # noqa: E402
from geovario_keras.backend.fit import fresh_order_arguments  # noqa: E402
from geovario_keras.backend.fit import model_variables  # noqa: E402
from geovario_keras.backend.fit import state_kept_on_error  # noqa: E402
from geovario_keras.backend.fit import step_function  # noqa: E402
from geovario_keras.backend.inference import distributed_batch  # noqa: E402
from geovario_keras.backend.inference import host_array  # noqa: E402
from geovario_keras.backend.inference import inference_devices  # noqa: E402
from geovario_keras.backend.inference import inference_function  # noqa: E402
from geovario_keras.backend.inference import is_tensor  # noqa: E402
from geovario_keras.backend.inference import shared_host_tensor  # noqa: E402
from geovario_keras.backend.step_ops import constant  # noqa: E402
from geovario_keras.backend.step_ops import dense_relu  # noqa: E402
from geovario_keras.backend.step_ops import fused  # noqa: E402
from geovario_keras.backend.step_ops import gaussian_steps  # noqa: E402
from geovario_keras.backend.step_ops import power  # noqa: E402
from geovario_keras.backend.step_ops import segment_sum  # noqa: E402
from geovario_keras.backend.step_ops import xla_formulation  # noqa: E402

__all__ = [
    "CHORD_DISTANCES",
    "NAME",
    "NATIVE_ARCSIN",
    "NATIVE_DIGITIZE",
    "check_distribution",
    "constant",
    "data_parallel",
    "data_parallel_strategy",
    "dense_relu",
    "distributed_batch",
    "fresh_order_arguments",
    "fused",
    "gather_replicas",
    "gaussian_steps",
    "host_array",
    "inference_devices",
    "inference_function",
    "is_tensor",
    "lost_process_errors",
    "model_variables",
    "power",
    "process_count",
    "process_index",
    "replica_count",
    "segment_sum",
    "shared_host_tensor",
    "state_kept_on_error",
    "step_function",
    "symbolic_build_batch",
    "worker_logs",
    "xla_formulation",
]
