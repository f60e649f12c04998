"""Data-parallel training: replicas with global negatives, and jobs of
several processes (`backend.replica_count`, `gather_replicas`,
`check_distribution`, `data_parallel`, `process_index`, `process_count`,
`symbolic_build_batch`, `worker_logs`, `data_parallel_strategy`,
`lost_process_errors`)."""

import contextlib
import json
import os

import keras

from geovario_keras.backend import NAME


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


def symbolic_build_batch(epoch_iterator, strategy):
    """The shapes and dtypes of a batch of a Keras `fit`/`evaluate` epoch
    iterator, read from its data set without drawing a batch; None where
    Keras does not draw one to build the model.

    TensorFlow under a `tf.distribute` strategy (the model's `strategy`,
    None without one): Keras 3.15's `_maybe_symbolic_build` draws a batch
    and averages it across replicas to build the model, which fails under
    `MultiWorkerMirroredStrategy` with several workers. The data set's
    element spec is enough to build. Without a strategy Keras builds when
    it traces the step, and the data set is not asked for (making it
    converts in-memory arrays to tensors once more: a copy of the data).
    """
    if NAME != "tensorflow" or epoch_iterator is None or strategy is None:
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
