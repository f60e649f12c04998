"""One process of a data-parallel training job, or its one-process reference.

Run by `tests/multiprocess_test.py`:

    # each of 2 processes (process 0 also coordinates)
    KERAS_BACKEND=jax python tests/multiprocess_training.py OUT \
        --job-addresses 127.0.0.1:PORT0,127.0.0.1:PORT1 --process-id 0
    # the reference: one process holding as many devices as the job
    KERAS_BACKEND=jax python tests/multiprocess_training.py REF --devices 2

For each method (`--methods`: the plain and the semivariogram loss, and
"stream", the semivariogram loss on the stored features of `--stream`
through `gv.training.fit_resumable`) it
trains until `--steps` steps are done, each step a Keras epoch of one
global batch of 256 rows (3 different batches of a `tf.data.Dataset`), so
the semivariogram callback fits between steps; `gv.training.StepCheckpoint`
saves after every step into `OUT/METHOD/checkpoints` (process 0 writes,
every process restores), so a rerun with more steps resumes after the last
one. The job is set up by `gv.backend.data_parallel` (JAX:
`jax.distributed` and `keras.distribution.DataParallel`; TensorFlow:
`MultiWorkerMirroredStrategy`), as `recipes/train.py` does; the reference
uses `DataParallel` over 2 virtual CPU devices (JAX) or `MirroredStrategy`
over 2 logical CPUs (TensorFlow), and with `--load JOB` also loads the
job's last checkpoints into a model without any distribution and evaluates
it. Each process writes `OUT/METHOD/process-{id}.json`: the losses of this
run, the weights, the queue, the variogram statistics after every step,
the fitted parameters, and the rows of the first global batch that its
own input pipeline delivered.
"""

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARGS = None
if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--methods", default="geoclip,semivariogram")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--job-addresses", default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--load", default=None)
    parser.add_argument(
        "--stream", default=None, help="FEATURES,TFDS: the 'stream' method"
    )
    parser.add_argument("--failure-timeout", type=int, default=100)
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds after each step"
    )
    ARGS = parser.parse_args()
    BACKEND = os.environ.get("KERAS_BACKEND", "jax")
    if ARGS.devices > 1 and BACKEND == "jax":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={ARGS.devices}"
        )
    elif ARGS.devices > 1:
        import tensorflow as tf

        _cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            _cpu, [tf.config.LogicalDeviceConfiguration()] * ARGS.devices
        )

import geovario_keras as gv  # noqa: E402
from tests.testing import parallel_geoclip  # noqa: E402
from tests.testing import smooth_features  # noqa: E402

BATCH, ROWS = 256, 768


def data():
    """768 coordinates and 16-d features that vary smoothly with them."""
    return smooth_features(ROWS)


def make_model(method):
    model, callbacks = parallel_geoclip(method)
    model.build((None, 16))
    return model, callbacks


def local_share(model, dataset):
    """The coordinates of the first global batch as this process's input
    pipeline hands them to the training step (its share of the rows)."""
    import keras
    import numpy as np

    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        if distribution is not None:
            dataset = distribution.distribute_dataset(dataset)
        _, gps = next(iter(dataset))
        return np.asarray(gps).tolist()
    strategy = model.distribute_strategy
    _, gps = next(iter(strategy.experimental_distribute_dataset(dataset)))
    local = strategy.experimental_local_results(gps)
    return np.concatenate([np.asarray(g) for g in local]).tolist()


def numpy(v):
    import keras
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(v)).tolist()


def stored_features():
    """The `geotagged_features` builder of `--stream` (built already) and
    its training stream as `fit_resumable` reads it."""
    folder, data_dir = ARGS.stream.split(",")
    builder = gv.data.geotagged_features(folder, data_dir, verbose=False)
    stream, _, _ = gv.data.streams.training_stream(
        builder, "train", BATCH, 1, shuffle_buffer=512, checkpoints_per_epoch=3
    )
    return builder, stream


def train(method, scope, dataset, out):
    """Trains `method` until `--steps` steps are done (resuming from the
    last checkpoint). "stream": the semivariogram loss on stored features
    through `gv.training.fit_resumable` (3 checkpoints per epoch)."""
    import keras

    directory = os.path.join(out, "checkpoints")
    found = gv.training.checkpoints(directory)
    start = found[-1][0] if found else 0
    with scope():
        model, callbacks = make_model(
            "semivariogram" if method == "stream" else method
        )
    statistics = []

    class Record(keras.callbacks.Callback):
        # `self.model` (not `model`): on JAX it syncs the state mid-epoch
        def on_train_batch_end(self, batch, logs=None):
            stats = self.model.variogram.statistics()
            statistics.append([s.tolist() for s in stats])
            print("step", flush=True)
            time.sleep(ARGS.pause)

        def on_epoch_end(self, epoch, logs=None):  # a Keras epoch: 1 step
            if epoch + 1 >= ARGS.steps:
                self.model.stop_training = True

    checkpoint = gv.training.StepCheckpoint(directory, chunk=1)
    history = None
    with warnings.catch_warnings():  # fits on 256 points may fall back
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "stream":
            builder, dataset = stored_features()
            history = gv.training.fit_resumable(
                model,
                builder,
                directory,
                epochs=1,
                batch_size=BATCH,
                checkpoints_per_epoch=3,
                shuffle_buffer=512,
                callbacks=[Record()] + callbacks,
                verbose=0,
            )
        elif start < ARGS.steps:
            history = model.fit(
                dataset.skip(start),
                epochs=ARGS.steps,
                steps_per_epoch=1,
                initial_epoch=start,
                verbose=0,
                shuffle=False,
                callbacks=[Record()] + callbacks + [checkpoint],
            )
        else:  # finished: load the last checkpoint
            checkpoint.set_model(model)
            checkpoint.on_train_begin()
    return {
        "processes": gv.backend.process_count(),
        "process": gv.backend.process_index(),
        "start": start,
        "loss": history.history["loss"] if history else [],
        "weights": [numpy(w) for w in model.trainable_weights],
        "queue": numpy(model.queue.features),
        "statistics": statistics,
        "params": numpy(model.variogram.params),
        "negatives": numpy(model.variogram.negatives),
        "share": local_share(model, dataset),
    }


def load_and_evaluate(method, job, dataset):
    """The job's last checkpoint in a model without any distribution."""
    import keras

    keras.distribution.set_distribution(None)
    model, _ = make_model("semivariogram" if method == "stream" else method)
    step, path = gv.training.checkpoints(os.path.join(job, "checkpoints"))[-1]
    model.load_weights(path)
    return {
        "step": step,
        "weights": [numpy(w) for w in model.trainable_weights],
        "evaluate": model.evaluate(dataset.take(1), verbose=0),
    }


def main():
    scope = contextlib.nullcontext
    if ARGS.job_addresses:  # the job (called again per model: same set-up)

        def scope():
            return gv.backend.data_parallel(
                ARGS.job_addresses,
                process_id=ARGS.process_id,
                failure_timeout_s=ARGS.failure_timeout,
            )

        scope()  # first, before anything runs on the backend

    elif ARGS.devices > 1 and gv.backend.NAME == "jax":
        scope = gv.backend.data_parallel  # every local device
    elif ARGS.devices > 1:
        import tensorflow as tf

        devices = [f"/cpu:{i}" for i in range(ARGS.devices)]
        scope = tf.distribute.MirroredStrategy(devices).scope
    import tensorflow as tf

    features, gps = data()
    dataset = tf.data.Dataset.from_tensor_slices((features, gps)).batch(
        BATCH, drop_remainder=True
    )
    for method in ARGS.methods.split(","):
        out = os.path.join(ARGS.out, method)
        result = train(method, scope, dataset, out)
        if ARGS.load:
            result["loaded"] = load_and_evaluate(
                method, os.path.join(ARGS.load, method), dataset
            )
        path = os.path.join(out, f"process-{result['process']}.json")
        with open(path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
