"""Saving that never loses a good file and loads on every backend.

- Keras writes `.keras` and `.weights.h5` files in place: a save that fails
  part way (a full disk, an interrupt, an object that cannot be serialised)
  leaves the previous file truncated. `GeoCLIP.save` and
  `GeoCLIP.save_weights` (so `keras.callbacks.ModelCheckpoint` too) go
  through `atomic_save`: the file is written next to its destination under
  a temporary name, then renamed over it in one step (`os.replace`).
- A long job that writes into a folder (feature extraction, resumable
  training) holds `folder_lock` on it, so that a second run started by
  mistake on the same folder is refused instead of mixing its files in.
- On PyTorch, Keras records the optimizer under its torch-only module
  (`keras.src.backend.torch.optimizers...`), so the file cannot train on
  JAX or TensorFlow. `portable_compile_config` names the backend-neutral
  `keras.optimizers` class instead, when saving and when loading.
"""

import contextlib
import datetime
import json
import os
import shutil
import socket
import uuid
import zipfile

import keras

_SUFFIXES = {"save": (".keras",), "save_weights": (".weights.h5",)}


def atomic_save(write, filepath, *args, overwrite=True, **kwargs):
    """Calls `write(tmp_path, ...)`, then renames `tmp_path` to `filepath`.

    Args:
        write: the bound Keras method, `Model.save` or `Model.save_weights`.
        filepath: destination path (str or path-like). Other targets (file
            objects) are passed to `write` unchanged.
        overwrite: bool. False refuses to replace an existing file.
        *args, **kwargs: passed to `write`.
    """
    if not isinstance(filepath, (str, os.PathLike)):
        return write(filepath, *args, overwrite=overwrite, **kwargs)
    path = os.fspath(filepath)
    suffixes = _SUFFIXES[write.__name__]
    if not path.endswith(suffixes):
        raise ValueError(
            f"`filepath` of `{write.__name__}` must end in {suffixes[0]!r} "
            "(the Keras 3 format, which holds GeoCLIP's state and loads on "
            f"every backend); got {path!r}."
        )
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists: pass `overwrite=True`.")
    folder, name = os.path.split(os.path.abspath(path))
    suffix = next(s for s in suffixes if name.endswith(s))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        result = write(tmp, *args, overwrite=True, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return result


def write_json(path, value):
    """Writes `value` as JSON to `path` beside and renamed (whole or absent)."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder, job):
    """Makes `job` the only writer of `folder` for the block.

    An exclusive lock (`fcntl.flock`) on `folder/.lock`. The operating
    system drops it when the process ends, however it ends (SIGKILL
    included), so a killed run leaves no stale lock behind and its rerun
    starts at once. A second run on the folder gets a `RuntimeError` naming
    the folder and the run that holds it. Where the file system has no
    locks, where the folder is read-only (a finished run that only loads)
    and on Windows, the block runs without one.

    Args:
        folder: the folder (created if needed).
        job: what writes there, for the error message
            (e.g. `"fit_resumable"`).

    Example:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with folder_lock(folder, "a job"):
    ...     with folder_lock(folder, "another job"):  # doctest: +ELLIPSIS
    ...         pass
    Traceback (most recent call last):
    ...
    RuntimeError: ... is being written by another run (a job, pid ...
    """
    f = _lock_file(os.fspath(folder), job)
    try:
        yield
    finally:
        if f is not None:
            f.close()  # closing the file drops the lock


def _lock_file(folder, job):
    """The open, locked `folder/.lock` noting `job`; None where no lock can
    be taken; a `RuntimeError` when another run holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    os.makedirs(folder, exist_ok=True)
    try:
        f = open(os.path.join(folder, LOCK_FILE), "a+")
    except OSError:  # a folder this process may read, not write
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(
            f"{folder!r} is being written by another run ({holder}). Wait "
            "for it to end (or stop it), or choose another folder: two runs "
            "writing the same folder would mix their files."
        ) from None
    except OSError:  # no locks on this file system
        f.close()
        return None
    now = datetime.datetime.now().isoformat(timespec="seconds")
    f.seek(0)
    f.truncate()
    f.write(f"{job}, pid {os.getpid()} on {socket.gethostname()}, since {now}")
    f.flush()
    return f


_BACKEND_OPTIMIZERS = "keras.src.backend."


@contextlib.contextmanager
def atomic_folder(path, overwrite=False, argument="folder"):
    """Writes a folder in one step, never over a good one by accident.

    Yields an empty temporary folder beside `path`. When the block ends
    without an error, it is renamed to `path` (an existing folder is moved
    aside first and deleted after); on an error it is deleted and `path` is
    left exactly as it was. Used by presets and generated corpora.

    Args:
        path: the folder to write (its parent is created if needed).
        overwrite: bool. False refuses to replace an existing `path`.
        argument: the argument name used in error messages.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path!r} exists: pass `overwrite=True` to replace it."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`{argument}` {path!r} is a file, not a folder.")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(path):
            old = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def portable_compile_config(config):
    """`config` with a backend-specific optimizer named as `keras.optimizers`.

    Example:

    >>> config = {"optimizer": {"module": "keras.src.backend.torch.optimizers"
    ...           ".torch_adam", "class_name": "Adam", "config": {}}}
    >>> portable_compile_config(config)["optimizer"]["module"]
    'keras.optimizers'
    """
    optimizer = (config or {}).get("optimizer")
    if not isinstance(optimizer, dict):
        return config
    module = optimizer.get("module") or ""
    name = optimizer.get("class_name")
    if module.startswith(_BACKEND_OPTIMIZERS) and hasattr(
        keras.optimizers, str(name)
    ):
        optimizer = dict(optimizer, module="keras.optimizers")
        optimizer.pop("registered_name", None)
        config = dict(config, optimizer=optimizer)
    return config


class SavingMixin:
    """`save`, `save_weights` and the compile config of `GeoCLIP`.

    Saves are atomic (`atomic_save`) and the saved optimizer is named by its
    backend-neutral class (`portable_compile_config`).
    """

    def save(self, filepath, *args, **kwargs):
        """`Model.save`, written to a temporary file, then renamed."""
        return atomic_save(super().save, filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        """`Model.save_weights`, written to a temporary file, then renamed."""
        return atomic_save(super().save_weights, filepath, *args, **kwargs)

    def get_compile_config(self):
        return portable_compile_config(super().get_compile_config())

    def compile_from_config(self, config):
        return super().compile_from_config(portable_compile_config(config))


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model`, with a clear error for a bad file.

    Keras reports any `.keras` path that is not a zip archive as "File not
    found", also when the file is there but truncated. This says which.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> _ = open(path, "wb").write(b"PK\\x03\\x04 cut short")
    >>> load_model(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ... exists (14 bytes) but is not a complete `.keras` archive...
    """
    path = os.fspath(filepath)
    if path.endswith(".keras") and "://" not in path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"No such `.keras` file: {path!r}.")
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path!r} exists ({os.path.getsize(path)} bytes) but is not "
                "a complete `.keras` archive (a zip file): it is truncated or "
                "of another format. Saves by `GeoCLIP.save` are atomic, so an "
                "interrupted copy is the usual cause."
            )
    return keras.saving.load_model(
        path,
        custom_objects=custom_objects,
        compile=compile,
        safe_mode=safe_mode,
    )
