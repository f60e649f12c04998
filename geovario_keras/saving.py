"""Saving that never leaves a good file half overwritten.

Keras writes `.keras` and `.weights.h5` files in place: a save that fails
part way (a full disk, an interrupt, an object that cannot be serialised)
leaves the previous file truncated. `GeoCLIP.save` and
`GeoCLIP.save_weights` (so `keras.callbacks.ModelCheckpoint` too) go
through `atomic_save`: the file is written next to its destination under a
temporary name, then renamed over it in one step (`os.replace`).
"""

import os
import uuid

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
