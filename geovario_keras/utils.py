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


# glibc's mallopt parameter M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3
_heap_bounded = []


def bound_heap_growth(threshold=1 << 20):
    """Serves allocations of `threshold` bytes or more by `mmap` (Linux).

    Long streams allocate and free buffers of a few MB many times a second
    (a batch of features, a block of embeddings). glibc's `malloc` raises
    its mmap threshold each time such a buffer is freed, after which they
    come from the heap, which fragments and grows with the number of rows
    read: a process streaming 1 M rows held 13 % more memory at the end
    than after 100 K. A fixed threshold returns every large buffer to the
    system when freed, so memory stays at the level of the first batches
    (BENCHMARKS.md, "The stored-features pipeline"). The long jobs of
    `gv.data` and `gv.training` call this once per process; it changes the
    whole process's allocator (only large allocations, which then cost a
    system call each). Without glibc (macOS, Windows, musl) it does
    nothing.

    Args:
        threshold: int >= 4096. Bytes from which allocations are mapped.

    Returns:
        bool: whether the threshold is set (True on glibc).
    """
    check_int("threshold", threshold, 4096)
    if _heap_bounded:
        return _heap_bounded[0]
    applied = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
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
