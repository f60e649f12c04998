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
"""

import glob
import os
import re
import tempfile
import warnings

import keras

from geovario_keras import backend
from geovario_keras.data import streams
from geovario_keras.saving import atomic_save

_NAME = "step-{step:012d}.weights.h5"
_PATTERN = re.compile(r"step-(\d{12})\.weights\.h5$")


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

    At train begin the newest checkpoint of `directory` is loaded (an
    unreadable one warns and the one before it is used) and `fit` starts
    at its Keras epoch. At each Keras epoch end the weights, the optimizer
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

    def on_train_begin(self, logs=None):
        found = checkpoints(self.directory)
        optimizer = self.model.optimizer
        if found and optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        for step, path in reversed(found):
            try:
                self.model.load_weights(path)
            except Exception as e:  # a damaged file: use the one before
                warnings.warn(f"Skipping unreadable checkpoint {path!r}: {e}")
                continue
            if step % self.chunk:
                raise ValueError(
                    f"Checkpoint {path!r} is at step {step}, not a multiple "
                    f"of this run's {self.chunk} steps per checkpoint: resume "
                    "with the arguments of the run that wrote it."
                )
            self.restored_step = step
            self.model._initial_epoch = step // self.chunk
            return

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
    the final weights.

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
    found = checkpoints(directory)
    start_step = found[-1][0] if found else 0
    steps, chunk = streams.schedule(
        builder, split, batch_size, checkpoints_per_epoch
    )
    checkpoint = StepCheckpoint(directory, chunk)
    if start_step >= epochs * steps:  # finished: load the final weights
        checkpoint.set_model(model)
        checkpoint.on_train_begin()
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
