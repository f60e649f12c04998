"""A restricted reader of PyTorch `.pth` checkpoints, without PyTorch.

A `.pth` file written by `torch.save` is a zip archive holding a pickle of
the state dict and one raw storage per tensor. `read_torch_checkpoint` opens
it with an unpickler that admits only the few classes a state dict needs
(no code from the file runs) and rebuilds each tensor as a numpy array.
"""

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# ------------------------------------------------------------ torch files
class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


def _rebuild_tensor(storage, offset, size, stride, *args):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[offset])
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, *args):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's `data.pkl` into numpy, nothing else.

    Only the handful of globals a state dict of plain tensors refers to are
    allowed; anything else (code, modules) is refused, as
    `torch.load(weights_only=True)` does.
    """

    _ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, read_record):
        super().__init__(file)
        self._read_record = read_record

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"Refusing to load `{module}.{name}`: not part of a plain tensor "
            "state dict."
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"Unknown persistent id {pid!r}.")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"Unsupported tensor storage {storage_type!r}."
            )
        data = self._read_record(f"data/{key}")
        return np.frombuffer(data, dtype=storage_type.dtype, count=numel)


def read_torch_checkpoint(file):
    """Reads a torch zip checkpoint of tensors into numpy, without torch.

    Args:
        file: a path or a binary file object of a file written by
            `torch.save` (zip format, the default since torch 1.6) holding a
            tensor or a (nested) dict of tensors.

    Returns:
        The same structure with `np.ndarray` in place of tensors.

    Raises:
        ValueError: if `file` is not a torch zip checkpoint, or holds
            anything but tensors.
    """
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{file!r} is not a torch zip checkpoint (written by torch.save "
            "with torch >= 1.6)."
        ) from e
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{file!r} has no single `data.pkl` record.")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and archive.read(order).strip() != b"little":
            raise ValueError(f"{file!r} is big-endian; not supported.")

        def read_record(name):
            return archive.read(prefix + name)

        try:
            return _TorchUnpickler(
                io.BytesIO(archive.read(pkl[0])), read_record
            ).load()
        except pickle.UnpicklingError as e:
            raise ValueError(f"Cannot read {file!r}: {e}") from e
