"""Small shared helpers: argument checks and non-trainable state."""

import ctypes
import math
import sys
import time

import numpy as np


def check_int(name, value, low=1):
    """Raises a `ValueError` naming `name` unless `value` is an int >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}; got {value!r}.")
    return value


def check_positive(name, value, allow_zero=False):
    """Raises a `ValueError` naming `name` unless `value` is a finite
    number > 0 (>= 0 with `allow_zero`); returns it as a float."""
    ok = isinstance(value, (int, float, np.floating, np.integer))
    low_ok = ok and (value >= 0 if allow_zero else value > 0)
    if isinstance(value, bool) or not low_ok or not value < math.inf:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a number {bound}; got {value!r}.")
    return float(value)


def gps_input_shape(layer, input_shape, layout="(N, 2)"):
    """`input_shape` with its last dimension 2 (latitude, longitude).

    Raises a `ValueError` naming `layer`'s class unless that dimension is
    2 or unknown.
    """
    if input_shape[-1] not in (None, 2):
        raise ValueError(
            f"{type(layer).__name__} expects inputs of shape {layout} "
            f"(latitude, longitude in degrees); got {input_shape}."
        )
    return tuple(input_shape[:-1]) + (2,)


def add_state(layer, name, shape, dtype="float32", value=None):
    """A non-trainable, never auto-cast state variable (zeros or `value`).

    Used for queues, galleries and semivariogram statistics: saved with the
    model, updated with `.assign()`, and kept in float32 under
    mixed-precision policies. `value` (an array of `shape`) initialises the
    variable directly, without a zero-filled one first (large galleries).
    """
    initializer = "zeros"
    if value is not None:

        def initializer(shape, dtype=None):
            return value

    return layer.add_weight(
        name=name,
        shape=shape,
        initializer=initializer,
        dtype=dtype,
        trainable=False,
        autocast=False,
    )


def check_noise_pair(gps_noise_m):
    """`gps_noise_m` as a pair of floats >= 0, or a `ValueError`."""
    pair = tuple(float(s) for s in gps_noise_m)
    if len(pair) != 2 or not min(pair) >= 0:
        raise ValueError(
            "`gps_noise_m` must be a pair (batch_sigma, queue_sigma) of "
            f"metres >= 0; got {gps_noise_m!r}."
        )
    return pair


def common_embed_dim(image_encoder, location_encoder):
    """The embedding size both encoders share, or a `ValueError`."""
    embed_dim = getattr(location_encoder, "embed_dim", None)
    if embed_dim is None:
        raise ValueError(
            "`location_encoder` must have an `embed_dim` attribute."
        )
    if getattr(image_encoder, "embed_dim", embed_dim) != embed_dim:
        raise ValueError(
            "`image_encoder.embed_dim` and `location_encoder.embed_dim` "
            f"must be equal; got {image_encoder.embed_dim} and "
            f"{embed_dim}."
        )
    return embed_dim


# glibc's mallopt parameters M_MMAP_THRESHOLD and M_TRIM_THRESHOLD.
_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -3, -1
_heap_bounded = []


def bound_heap_growth(threshold=4 << 20, trim_threshold=64 << 20):
    """Keeps a long stream's memory from growing with the rows read (Linux).

    Long streams allocate and free buffers of a few MB many times a second
    (batches of features, file read buffers, blocks of embeddings).
    glibc's `malloc` raises its mmap threshold each time a large buffer is
    freed, after which ever larger buffers come from the heap, which
    fragments: a process streaming 1 M rows held 8 % more memory at the end
    than after its first 100 K, and still growing. Fixed thresholds stop
    that (the same run: +1 to 2 %; BENCHMARKS.md, "The stored-features
    pipeline"): allocations of `threshold` bytes or more are mapped and
    returned to the system when freed, smaller ones (a batch of 512 x 768
    float32 features is 1.5 MB) still come from the heap, which is trimmed
    only beyond `trim_threshold` bytes free at its top. The long jobs of
    `gv.data`, `gv.training` and `gv.evaluation` call this once per
    process; it changes the whole process's allocator. Without glibc
    (macOS, Windows, musl) it does nothing. The environment variables
    `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` do the same.

    Args:
        threshold: int >= 4096. Bytes from which allocations are mapped.
        trim_threshold: int >= 4096. Free bytes at the heap's top kept
            before it is returned to the system.

    Returns:
        bool: whether the thresholds are set (True on glibc).
    """
    check_int("threshold", threshold, 4096)
    check_int("trim_threshold", trim_threshold, 4096)
    if _heap_bounded:
        return _heap_bounded[0]
    applied = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            applied = bool(
                libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
                and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
            )
        except (OSError, AttributeError):  # not glibc
            applied = False
    _heap_bounded.append(applied)
    return applied


class RowProgress:
    """Progress lines of a long job: rows done, rows/s and an ETA.

    Prints at most every `every_s` seconds, and at the end. `done` rows
    finished before this run (a resumed job) count as done but not in the
    rate.
    """

    def __init__(self, what, total, done=0, verbose=1, every_s=10.0):
        self.what, self.total, self.done = what, total, done
        self.start_done, self.start = done, time.time()
        self.verbose, self.every_s, self.last = verbose, every_s, 0.0

    def update(self, rows):
        self.done += rows
        now = time.time()
        final = self.done >= self.total
        if not self.verbose or (now - self.last < self.every_s and not final):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        print(
            f"{self.what}: {self.done:,}/{self.total:,} rows "
            f"({100 * self.done / max(self.total, 1):.1f} %), "
            f"{rate:,.0f} rows/s, ETA {eta:,.0f} s",
            flush=True,
        )
