"""Reference sets and evaluation streamed from stored features.

For data sets of millions of rows (a `geotagged_features` builder):
`set_reference_from_features` encodes a split block by block into the
model's reference set (memory: the reference embeddings themselves, which
are model state, plus one block), and `evaluate_features` predicts a split
block by block in any retrieval mode and scores it with
`gv.metrics.geolocation_report` (memory: one block of features and the
predicted coordinates). Both print progress with rows/s and an ETA.
Given a `backup_dir`, `evaluate_features` keeps each finished block's
predictions there, so that a killed evaluation predicts only the blocks
it had not finished when it is run again.
"""

import contextlib
import hashlib
import json
import os

import numpy as np

from geovario_keras import backend
from geovario_keras import geo
from geovario_keras import metrics
from geovario_keras import retrieval
from geovario_keras.data import streams
from geovario_keras.data.corpus_reader import LABELS
from geovario_keras.layers.gps_gallery import check_dtype
from geovario_keras.saving import LOCK_FILE
from geovario_keras.saving import folder_lock
from geovario_keras.saving import write_json
from geovario_keras.utils import RowProgress
from geovario_keras.utils import check_int
from geovario_keras.validation import check_feature_size


def _blocks(builder, split, block_size, labels=()):
    """Numpy dicts of `block_size` rows of `split`, in stored order."""
    return streams.split_blocks(builder, split, block_size, labels)


def _check_rows(split, rows, total):
    if rows != total:
        raise ValueError(
            f"Split {split!r} yielded {rows} rows, its info says {total}: "
            "the data set is damaged; rebuild it."
        )


def set_reference_from_features(
    model, builder, split="train", block_size=16384, verbose=1, dtype=None
):
    """Encodes a stored-features split as the model's reference set.

    Args:
        model: a `GeoCLIP` whose image encoder takes the stored features.
        builder: a built `gv.data.geotagged_features` builder.
        split: the split (typically the training split).
        block_size: int >= 1. Rows read and encoded per block.
        verbose: 0 or 1. Progress lines.
        dtype: None (keep the model's `reference_dtype`), `"float32"`,
            `"float16"` or `"bfloat16"`: the embeddings' storage (float16:
            half the memory, held so while the split is read).

    Returns:
        The number of reference rows.
    """
    check_feature_size(model, builder)
    total = builder.info.splits[split].num_examples
    dim = model.image_encoder.embed_dim
    # Held in the storage dtype (float16 halves it; numpy has no bfloat16).
    dtype = check_dtype(dtype or model.reference.embeddings_dtype)
    held = "float16" if dtype == "float16" else "float32"
    emb = np.empty((total, dim), held)
    gps = np.empty((total, 2), "float32")
    rate, at = RowProgress(f"reference {split}", total, verbose=verbose), 0
    for block in _blocks(builder, split, block_size):
        n = len(block["gps"])
        emb[at : at + n] = model.encode_image(
            block["features"], batch_size=min(n, 4096)
        )
        gps[at : at + n] = block["gps"]
        at += n
        rate.update(n)
    _check_rows(split, at, total)
    model.reference.set(
        geo.check_gps(gps, name="gps"), emb, copy=False, embeddings_dtype=dtype
    )
    return total


def evaluate_features(
    model,
    builder,
    split="test",
    mode="gallery",
    block_size=8192,
    admin_levels=True,
    verbose=1,
    backup_dir=None,
    **options,
):
    """`gv.metrics.geolocation_report` of the top-1 predictions of a split.

    Args:
        model: a `GeoCLIP` over the stored features, with its gallery set
            (and its reference for `"reference"` / `"hybrid"`).
        builder: a built `gv.data.geotagged_features` builder.
        split: the split to score.
        mode: `"gallery"`, `"reference"` or `"hybrid"` (`predict_gps`).
        block_size: int >= 1. Queries per block.
        admin_levels: bool. Also score country / region / sub-region /
            city against the stored labels (rows without one are left out
            of that level).
        verbose: 0 or 1. Progress lines with queries/s and ETA.
        backup_dir: None, or a folder that keeps the predictions of each
            finished block (a file renamed into place, whole or absent).
            Killed at any moment and run again with the same arguments,
            the evaluation predicts only the blocks that have none, with
            the same result. The predictions there belong to one
            evaluation: another model (weights, gallery or reference set),
            data set, split, mode, block size or option is a `ValueError`
            naming it, the files untouched. Removed at the end. One
            process only (a job of several is refused).
        **options: `gv.retrieval.RetrievalOptions` fields.

    Returns:
        `(report, predictions (N, 2))`.

    Example:

    ```python
    report, pred = gv.evaluation.evaluate_features(
        model, builder, "test", "reference", backup_dir="~/runs/eval")
    ```
    """
    check_feature_size(model, builder)
    total = builder.info.splits[split].num_examples
    check_int("block_size", block_size)
    # Before anything is written: a bad mode or option is refused here,
    # not at the first block after the backup's settings are recorded.
    retrieval.check_mode(model, mode)
    retrieval.RetrievalOptions(**options)
    if mode == "gallery":
        model.gallery.check_top_k(1)
    backup = None
    if backup_dir is not None and backend.process_count() > 1:
        raise ValueError(
            "`backup_dir` keeps the predictions of one process; this job "
            f"has {backend.process_count()} (each would skip other blocks "
            "than the others). Evaluate in one process, or without it."
        )
    if backup_dir is not None:
        backup = _Backup(
            backup_dir,
            {
                "dataset": builder.info.full_name,
                "split": split,
                "rows": int(total),
                "mode": mode,
                "block_size": int(block_size),
                "options": _json_safe(options),
                "model": model_digest(model),
            },
        )
    with contextlib.ExitStack() as stack:
        if backup is not None:
            stack.enter_context(
                folder_lock(backup.directory, "evaluate_features")
            )
            backup.check()
        pred, true, labels = _predict_blocks(
            model, builder, split, mode, block_size, verbose, backup, options
        )
    report = metrics.geolocation_report(
        pred,
        true,
        admin_levels=admin_levels,
        true_labels={k: np.array(v) for k, v in labels.items()}
        if admin_levels
        else None,
    )
    if backup is not None:
        backup.remove()
    return report, pred


def _predict_blocks(
    model, builder, split, mode, block_size, verbose, backup, options
):
    """Top-1 coordinates, true coordinates and labels of `split`, block
    by block (the blocks `backup` keeps are read, not predicted)."""
    total = builder.info.splits[split].num_examples
    pred = np.empty((total, 2), "float32")
    true = np.empty((total, 2), "float32")
    labels = {k: [] for k in LABELS}
    kept = backup.finished(total) if backup is not None else 0
    rate, at = (
        RowProgress(
            f"evaluate {split} ({mode})",
            total,
            done=min(kept * block_size, total),
            verbose=verbose,
        ),
        0,
    )
    blocks = _blocks(builder, split, block_size, LABELS)
    for index, block in enumerate(blocks):
        n = len(block["gps"])
        if index < kept:  # predicted by an earlier run
            pred[at : at + n] = backup.load(index, n)
        else:
            coords, _ = model.predict_gps(
                block["features"],
                top_k=1,
                mode=mode,
                batch_size=min(n, 4096),
                **options,
            )
            pred[at : at + n] = coords[:, 0]
            if backup is not None:
                backup.save(index, pred[at : at + n])
            rate.update(n)
        true[at : at + n] = block["gps"]
        for k in LABELS:
            labels[k].extend(v.decode("utf-8") for v in block[k])
        at += n
    _check_rows(split, at, total)
    return pred, true, labels


def model_digest(model):
    """SHA-1 of what a `GeoCLIP`'s predictions depend on.

    Every variable's values, but the training-only state (the GPS queue,
    the semivariogram's statistics and fit) and the gallery's and
    reference set's embeddings, which the encoders compute from their
    coordinates and the stored features: of those, shape and dtype.

    Example:

    >>> import geovario_keras as gv
    >>> model = gv.GeoCLIP(
    ...     gv.layers.ImageEncoder(None, embed_dim=8, hidden_units=16),
    ...     gv.layers.MLPLocationEncoder(hidden_units=16, embed_dim=8))
    >>> _ = model(np.zeros((1, 5), "float32"))
    >>> model.set_gallery(np.array([[0.0, 0.0], [10.0, 20.0]]), verbose=0)
    >>> before = model_digest(model)
    >>> model.set_gallery(np.array([[0.0, 0.0], [10.0, 21.0]]), verbose=0)
    >>> model_digest(model) == before
    False
    """
    import keras

    training_only = set()
    for name in ("queue", "variogram"):
        layer = getattr(model, name, None)
        if layer is not None:
            training_only.update(id(v) for v in layer.variables)
    derived = {
        id(getattr(getattr(model, name, None), "embeddings", None))
        for name in ("gallery", "reference")
    }
    digest = hashlib.sha1()
    for v in model.weights:
        if id(v) in training_only:
            continue
        # Not the paths: Keras numbers unnamed layers per process.
        digest.update(f"{tuple(v.shape)}{v.dtype}".encode())
        if id(v) not in derived:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(v))
            digest.update(value.tobytes())
    return digest.hexdigest()


def _json_safe(value):
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


class _Backup:
    """The finished blocks' predictions of one evaluation in a folder."""

    SETTINGS = "evaluation.json"

    def __init__(self, directory, settings):
        self.directory = os.path.abspath(
            os.path.expanduser(os.fspath(directory))
        )
        self.settings = _json_safe(settings)

    def check(self):
        """Refuses another evaluation's predictions; records this one's."""
        path = os.path.join(self.directory, self.SETTINGS)
        if os.path.isfile(path):
            with open(path) as f:
                old = json.load(f)
            diff = {
                k: (old.get(k), v)
                for k, v in self.settings.items()
                if old.get(k) != v
            }
            if diff:
                raise ValueError(
                    f"`backup_dir` {self.directory!r} holds the predictions "
                    f"of another evaluation (was, now: {diff}). Evaluate "
                    "with its model and arguments, or give another folder "
                    "(or delete it)."
                )
        else:
            write_json(path, self.settings)

    def _path(self, index):
        return os.path.join(self.directory, f"block-{index:09d}.npy")

    def finished(self, total):
        """Blocks 0, 1, ... whose predictions are kept."""
        blocks = -(-total // self.settings["block_size"])
        count = 0
        while count < blocks and os.path.isfile(self._path(count)):
            count += 1
        return count

    def load(self, index, rows):
        path = self._path(index)
        try:
            value = np.load(path)
        except Exception as e:
            raise ValueError(f"{path!r} cannot be read: {e}") from e
        if value.shape != (rows, 2):
            raise ValueError(
                f"{path!r} holds {value.shape[0]} predictions; its block "
                f"has {rows} rows: delete it to predict the block again."
            )
        return value

    def save(self, index, pred):
        path = self._path(index)
        tmp = f"{path}.tmp.npy"
        np.save(tmp, pred)
        os.replace(tmp, path)

    def remove(self):
        for name in os.listdir(self.directory):
            if name == self.SETTINGS or name.startswith("block-"):
                os.remove(os.path.join(self.directory, name))
        try:
            os.remove(os.path.join(self.directory, LOCK_FILE))
            os.rmdir(self.directory)
        except OSError:  # other files of the user's: left
            pass
