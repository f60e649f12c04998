"""Training on stored features that resumes exactly after a kill.

`fit_resumable` trains a model on a `geotagged_features` data set streamed
from disk (`gv.data.streams`) and saves a checkpoint every `chunk` steps
(several per epoch). Killed at any moment and run again with the same
arguments, it loads the last checkpoint (weights, optimizer state, the
GPS queue, the semivariogram statistics and fit: everything the model
holds) and continues with the very batch that followed it, so the run ends
as an uninterrupted one would.

Keras's `BackupAndRestore(save_freq=N)` saves mid-epoch too, but restores
only the epoch number: the interrupted epoch starts again from its first
batch, and its metadata is written after its weights, so a kill between
the two files resumes from an inconsistent pair. Here a Keras epoch is
one chunk of steps, each checkpoint is one file renamed into place (whole
or absent), and its name carries the step.

A resumption is exact only with the run's own settings, model and folder
to itself, so each is checked rather than assumed: the settings that fix
the order of the batches, and the loss's and optimizer's arguments, are
kept in `run.json` beside the checkpoints (another seed, batch size,
learning rate, ... is refused, naming it), checkpoints that
do not load into the model are an error (never a silent fresh start),
and the folder is locked while a run writes it.
"""

import contextlib
import glob
import json
import os
import re
import tempfile
import warnings

import keras

from geovario_keras import backend
from geovario_keras.data import streams
from geovario_keras.saving import atomic_save
from geovario_keras.saving import folder_lock
from geovario_keras.saving import portable_compile_config
from geovario_keras.saving import write_json
from geovario_keras.utils import check_int
from geovario_keras.validation import check_feature_size

_NAME = "step-{step:012d}.weights.h5"
_PATTERN = re.compile(r"step-(\d{12})\.weights\.h5$")
RUN_FILE = "run.json"


def checkpoints(directory):
    """`[(step, path), ...]` of the checkpoints in `directory`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(os.fspath(directory), "step-*.h5")):
        match = _PATTERN.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the model every Keras epoch of `chunk` steps; restores the last.

    At train begin the newest checkpoint of `directory` is loaded and `fit`
    starts at its Keras epoch. A checkpoint that cannot be loaded (damaged
    on disk) is passed over, with a warning, for the one before it; when
    checkpoints exist and none of them loads into the model (written by
    another model, or all damaged) it is a `ValueError`, with the model's
    variables left as they were: the run never starts afresh over another
    run's checkpoints. At each Keras epoch end the weights, the optimizer
    state and every non-trainable variable go to
    `step-{global step}.weights.h5` (written beside and renamed); the
    `keep` newest are kept. In a job of several processes
    (`gv.backend.data_parallel`) every process restores and process 0
    alone writes, so `directory` must be one folder that all of them see.

    Args:
        directory: the checkpoint folder (created).
        chunk: int >= 1. Steps per Keras epoch.
        keep: int >= 1. Checkpoints kept.
    """

    def __init__(self, directory, chunk, keep=2):
        super().__init__()
        self.directory = os.fspath(directory)
        self.chunk = int(chunk)
        self.keep = int(keep)
        self.restored_step = 0
        self._pending = None  # a step `restore` found for the next fit

    def restore(self):
        """Loads the newest checkpoint that loads; returns its step.

        0 when the folder holds none. `fit` with this callback then starts
        at the step's Keras epoch without loading it again.
        """
        found = checkpoints(self.directory)
        optimizer = self.model.optimizer
        if found and optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        # A file of another model may load some variables before it fails:
        # kept, to put back when none loads (copies on the device).
        kept = [
            (v, keras.ops.copy(v.value))
            for v in (backend.model_variables(self.model) if found else [])
        ]
        failed = []
        for step, path in reversed(found):
            try:
                self.model.load_weights(path)
            except Exception as e:  # damaged, or of another model
                failed.append((path, e))
                continue
            if step % self.chunk:
                raise ValueError(
                    f"Checkpoint {path!r} is at step {step}, not a multiple "
                    f"of this run's {self.chunk} steps per checkpoint: resume "
                    "with the arguments of the run that wrote it."
                )
            if failed:
                warnings.warn(
                    f"Resuming from {path!r} (step {step}): the newer "
                    f"checkpoint(s) {[p for p, _ in failed]} could not be "
                    f"loaded ({failed[0][1]}); the steps after {step} run "
                    "again."
                )
            self.restored_step = self._pending = step
            return step
        if failed:
            for variable, value in kept:
                variable.assign(value)
            path, error = failed[0]
            raise ValueError(
                f"None of the {len(found)} checkpoints in "
                f"{self.directory!r} loads into this model (the newest, "
                f"{path!r}: {error}). They were written by another model "
                "(another architecture or optimizer) or are damaged: train "
                "this model into another folder, or delete them to start "
                "afresh."
            ) from error
        self.restored_step = self._pending = 0
        return 0

    def on_train_begin(self, logs=None):
        step = self.restore() if self._pending is None else self._pending
        self._pending = None
        if step:
            self.model._initial_epoch = step // self.chunk

    def on_epoch_end(self, epoch, logs=None):
        if backend.process_index() != 0:
            # One writer in a job of several processes; the others save too
            # (a save may run collectives on JAX), into a file they delete.
            with tempfile.TemporaryDirectory() as folder:
                self.model.save_weights(os.path.join(folder, _NAME))
            return
        os.makedirs(self.directory, exist_ok=True)
        step = (epoch + 1) * self.chunk
        path = os.path.join(self.directory, _NAME.format(step=step))
        atomic_save(self.model.save_weights, path)
        for _, old in checkpoints(self.directory)[: -self.keep]:
            os.remove(old)


_STEP_SETTINGS = ("loss", "optimizer")


def step_settings(model):
    """What each training step of `model` does: its compiled loss and
    optimizer as flat `{"loss": class, "loss.<argument>": value, ...}`.

    From Keras's compile config, without the objects' names (Keras numbers
    them per process: `adam`, `adam_1`, ...). Empty for a model whose
    compile arguments Keras cannot serialise.

    Example:

    >>> model = keras.Sequential([keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    >>> settings = step_settings(model)
    >>> settings["optimizer"], settings["optimizer.learning_rate"]
    ('Adam', 0.0010000000474974513)
    >>> settings["loss"]
    'mse'
    """
    try:
        config = portable_compile_config(model.get_compile_config() or {})
    except Exception:  # objects Keras cannot serialise: nothing recorded
        return {}
    flat = {}
    for key in _STEP_SETTINGS:
        if key in config:
            flat.update(_flat(config[key], key))
    # As read back from run.json (tuples as lists, numbers as JSON's).
    return json.loads(json.dumps(flat, default=repr))


_RECORDED = _STEP_SETTINGS + ("callbacks",)


def _callback_settings(callbacks):
    """`{"callbacks.<class>": ..., "callbacks.<class>.<argument>": ...}` of
    the callbacks that have a `get_config` (`SemivariogramCallback`: when
    and how the variogram is refitted, which changes the later steps)."""
    flat = {}
    for callback in callbacks:
        if callable(getattr(callback, "get_config", None)):
            name = type(callback).__name__
            flat.update(
                _flat(
                    {"class_name": name, "config": callback.get_config()},
                    f"callbacks.{name}",
                )
            )
    return json.loads(json.dumps(flat, default=repr))


def _flat(value, prefix):
    if isinstance(value, dict) and "class_name" in value:
        flat = {prefix: value["class_name"]}
        config = value.get("config")
        if isinstance(config, dict):
            flat.update(_flat(config, prefix))
        elif config is not None:
            flat[prefix + ".config"] = config
        return flat
    if isinstance(value, dict):
        flat = {}
        for k, v in value.items():
            if k != "name":
                flat.update(_flat(v, f"{prefix}.{k}"))
        return flat
    return {prefix: value}


def _check_run(directory, run):
    """Refuses to resume the checkpoints of `directory` with other
    settings than those of its `run.json`; records `run` (process 0)."""
    path = os.path.join(directory, RUN_FILE)
    if checkpoints(directory) and os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        keys = set(old) | set(run)
        if "optimizer" not in old:  # written before the step was recorded
            keys = {k for k in keys if k.split(".")[0] not in _RECORDED}
        diff = {
            k: (old.get(k), run.get(k))
            for k in sorted(keys)
            if old.get(k) != run.get(k)
        }
        if diff:
            raise ValueError(
                f"{directory!r} holds the checkpoints of a run with other "
                f"settings (was, now: {diff}). Resume with that run's "
                "settings (they fix the order of the batches and what each "
                "step does; its checkpoints hold its optimizer's state, "
                "learning rate included), or train into another folder."
            )
    elif backend.process_index() == 0:
        write_json(path, run)


def fit_resumable(
    model,
    builder,
    directory,
    epochs,
    batch_size,
    split="train",
    checkpoints_per_epoch=10,
    seed=0,
    shuffle_buffer=16384,
    callbacks=(),
    verbose="auto",
):
    """`model.fit` on a stored-features split, resumable after a kill.

    Trains `epochs` epochs of `split` of a `geotagged_features` builder,
    streamed (`gv.data.streams.training_stream`), with
    `checkpoints_per_epoch` checkpoints per epoch in `directory`. Run it
    again with the same arguments after an interruption: it continues from
    the last checkpoint with the next batch, so the result equals that of
    an uninterrupted run. When the run is already complete it only loads
    the final weights. `epochs` may grow between runs (train longer);
    the settings that fix the order of the batches (data set, split,
    `batch_size`, `checkpoints_per_epoch`, `seed`, `shuffle_buffer`) and
    what the steps do (the compiled loss's and optimizer's arguments,
    `step_settings`, and those of callbacks with a `get_config`, such as
    `SemivariogramCallback`'s refits) are kept in `directory/run.json`
    and another value is a `ValueError` (Keras's load would put the
    checkpoint's learning rate over a new one without a word), as are
    checkpoints that do not load into `model` and features of another
    size than `model` takes; a second run on a folder that a run is
    writing is a `RuntimeError`.

    Each Keras epoch of `fit` is one checkpoint interval (`chunk` steps),
    so `History` and callbacks see `epochs * checkpoints_per_epoch` Keras
    epochs. Give `gv.callbacks.SemivariogramCallback` `refit_every` and
    `warmup_epochs` equal to `checkpoints_per_epoch` to refit once per
    epoch of data (`semivariogram_callback` below does so).

    Args:
        model: a compiled, built model taking `(features, gps)` batches.
        builder: a built `gv.data.geotagged_features` builder.
        directory: the checkpoint folder.
        epochs: int >= 1. Epochs of data.
        batch_size: int >= 1.
        split: the split to train on.
        checkpoints_per_epoch: int >= 1.
        seed: int. The data order (`gv.data.streams`).
        shuffle_buffer: int >= 0. Rows in the shuffle buffer.
        callbacks: more Keras callbacks.
        verbose: as `fit`.

    Returns:
        The `History` of this call (None when there was nothing left).

    Example:

    ```python
    builder = gv.data.geotagged_features("~/osv5m_features")
    model = gv.GeoCLIP(gv.layers.ImageEncoder(None, embed_dim=512))
    model.compile(optimizer="adam",
                  loss=gv.losses.SemivariogramContrastiveLoss())
    model.build((None, 768))
    gv.training.fit_resumable(
        model, builder, "~/runs/sv", epochs=10, batch_size=512,
        callbacks=[gv.training.semivariogram_callback(10)])
    ```
    """
    check_int("epochs", epochs)
    check_int("shuffle_buffer", shuffle_buffer, 0)
    check_feature_size(model, builder)
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    steps, chunk = streams.schedule(
        builder, split, batch_size, checkpoints_per_epoch
    )
    run = {
        "dataset": builder.info.full_name,
        "split": split,
        "rows": int(builder.info.splits[split].num_examples),
        "batch_size": int(batch_size),
        "checkpoints_per_epoch": int(checkpoints_per_epoch),
        "seed": int(seed),
        "shuffle_buffer": int(shuffle_buffer),
        **step_settings(model),
        **_callback_settings(callbacks),
    }
    checkpoint = StepCheckpoint(directory, chunk)
    checkpoint.set_model(model)
    writer = backend.process_index() == 0
    with (
        folder_lock(directory, "fit_resumable")
        if writer
        else contextlib.nullcontext()
    ):
        _check_run(directory, run)
        start_step = checkpoint.restore()
        if start_step >= epochs * steps:  # finished: the final weights
            return None
        stream, _, _ = streams.training_stream(
            builder,
            split,
            batch_size,
            epochs,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            start_step=start_step,
            checkpoints_per_epoch=checkpoints_per_epoch,
        )
        return model.fit(
            stream,
            epochs=epochs * steps // chunk,
            steps_per_epoch=chunk,
            initial_epoch=start_step // chunk,
            shuffle=False,  # the stream's order is the run's order
            callbacks=list(callbacks) + [checkpoint],
            verbose=verbose,
        )


def semivariogram_callback(checkpoints_per_epoch, **kwargs):
    """`SemivariogramCallback` refitting once per epoch of data under
    `fit_resumable` (its Keras epochs are checkpoint intervals)."""
    from geovario_keras.callbacks import SemivariogramCallback

    kwargs.setdefault("refit_every", checkpoints_per_epoch)
    kwargs.setdefault("warmup_epochs", checkpoints_per_epoch)
    return SemivariogramCallback(**kwargs)
