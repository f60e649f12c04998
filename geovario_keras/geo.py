"""Geometry on the sphere: validation, great-circle distance, geodesic noise.

Coordinates are always ``(latitude, longitude)`` in degrees, last axis of size
2. Tensor functions use `keras.ops` only and compute in float32 whatever the
dtype policy; `check_gps` is the numpy-side gatekeeper used at every public
entry point so that bad coordinates raise a clear `ValueError` instead of
turning into a silent NaN loss.
"""

import math

import keras
import numpy as np
from keras import ops

from geovario_keras import backend

EARTH_RADIUS_KM = 6371.0
"""Mean Earth radius used throughout (OSV5M / GeoCLIP evaluation)."""


def check_gps(gps, name="gps", allow_empty=False):
    """Validate coordinates and return them as a float32 numpy array.

    Args:
        gps: array-like of shape `(N, 2)`: latitude, longitude in degrees.
        name: str. Argument name used in error messages.
        allow_empty: bool. Whether `N == 0` is accepted.

    Returns:
        A float32 numpy array of shape `(N, 2)`.

    Raises:
        ValueError: naming `name` and the allowed range when the rank, the
            last dimension, the dtype, the values (NaN, inf, |lat| > 90,
            |lon| > 180) or the emptiness is wrong.
    """
    try:
        arr = backend.host_array(gps)
    except Exception as e:  # pragma: no cover - message only
        raise ValueError(
            f"`{name}` must be array-like of shape (N, 2) with latitude and "
            f"longitude in degrees; could not convert it: {e}"
        ) from e
    if arr.dtype.kind not in "fiu":
        raise ValueError(
            f"`{name}` must hold real numbers (latitude, longitude in "
            f"degrees); got dtype {arr.dtype}."
        )
    if arr.ndim != 2 or arr.shape[-1] != 2:
        raise ValueError(
            f"`{name}` must have shape (N, 2) (latitude, longitude in "
            f"degrees); got shape {arr.shape}."
        )
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"`{name}` is empty: it needs at least one point.")
    arr = arr.astype("float32")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.all(np.isfinite(arr), axis=-1)))
        raise ValueError(
            f"`{name}` contains NaN or infinite values ({bad} rows); "
            "latitude must be in [-90, 90] and longitude in [-180, 180]."
        )
    lat, lon = arr[:, 0], arr[:, 1]
    if np.any(np.abs(lat) > 90.0):
        raise ValueError(
            f"`{name}` has latitudes outside [-90, 90] (found "
            f"{lat[np.abs(lat) > 90.0][0]:g}); columns must be "
            "(latitude, longitude) in degrees."
        )
    if np.any(np.abs(lon) > 180.0):
        raise ValueError(
            f"`{name}` has longitudes outside [-180, 180] (found "
            f"{lon[np.abs(lon) > 180.0][0]:g}); columns must be "
            "(latitude, longitude) in degrees."
        )
    return arr


def check_gps_array(gps, name="gps"):
    """Validates `gps` if it is an array, list or tensor.

    Returns the checked float32 array, or `gps` itself when it is a data set
    or generator (`tf.data`, `PyDataset`: not read) or None.
    """
    if isinstance(gps, (np.ndarray, list, tuple)) or backend.is_tensor(gps):
        return check_gps(gps, name=name)
    return gps


def _to_float32(x):
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) != "float32":
        x = ops.cast(x, "float32")
    return x


def haversine_km(a, b):
    """Great-circle distance in km between matching points of `a` and `b`.

    Uses the haversine formula on a sphere of radius `EARTH_RADIUS_KM`.
    Broadcasts like `a - b` over the leading axes.

    Args:
        a: tensor `(..., 2)` of (lat, lon) in degrees.
        b: tensor `(..., 2)` of (lat, lon) in degrees.

    Returns:
        float32 tensor of shape `broadcast(a, b)[:-1]`.

    Example:

    >>> d = haversine_km([[0.0, 0.0]], [[0.0, 1.0]])  # 1 degree of equator
    >>> round(float(keras.ops.convert_to_numpy(d)[0]), 2)
    111.19
    """
    a = _to_float32(a)
    b = _to_float32(b)
    deg = math.pi / 180.0
    lat1, lon1 = a[..., 0] * deg, a[..., 1] * deg
    lat2, lon2 = b[..., 0] * deg, b[..., 1] * deg
    s_lat = ops.sin((lat2 - lat1) / 2.0)
    s_lon = ops.sin((lon2 - lon1) / 2.0)
    h = s_lat * s_lat + ops.cos(lat1) * ops.cos(lat2) * s_lon * s_lon
    h = ops.clip(h, 0.0, 1.0)
    return 2.0 * EARTH_RADIUS_KM * ops.arcsin(ops.sqrt(h))


# Cephes' single-precision arcsine (asinf): a polynomial in z on [0, 0.5],
# with asin(x) = pi / 2 - 2 asin(sqrt((1 - x) / 2)) above.
_ASIN_COEFFICIENTS = (
    4.2163199048e-2,
    2.4181311049e-2,
    4.5470025998e-2,
    7.4953002686e-2,
    1.6666752422e-1,
)


def _arcsin_unit(x):
    # arcsin of x in [0, 1], float32, within 3e-7 relative of the exact
    # value: on JAX multiplies and one square root, where XLA's `arcsin` on
    # the CPU costs as much as ~20 exponentials (BENCHMARKS.md).
    if backend.NATIVE_ARCSIN and not backend.xla_formulation():
        return ops.arcsin(x)
    upper = x > 0.5
    z = ops.where(upper, 0.5 * (1.0 - x), x * x)
    s = ops.where(upper, ops.sqrt(z), x)
    p = _ASIN_COEFFICIENTS[0]
    for c in _ASIN_COEFFICIENTS[1:]:
        p = p * z + c
    p = p * z * s + s
    return ops.where(upper, 0.5 * math.pi - 2.0 * p, p)


def _unit_vector_columns(gps):
    # Divided by their norm (1 up to rounding): XLA never copies a division
    # into a consumer that reads its elements more than once, so the
    # trigonometry runs once per point; without it XLA fuses the sines and
    # cosines into the (N, M) pair loop and runs them for every pair (~5x
    # the whole distance's cost, BENCHMARKS.md).
    deg = math.pi / 180.0
    lat, lon = gps[:, 0] * deg, gps[:, 1] * deg
    cos_lat = ops.cos(lat)
    x, y, z = cos_lat * ops.cos(lon), cos_lat * ops.sin(lon), ops.sin(lat)
    norm = ops.sqrt(x * x + y * y + z * z)
    return x / norm, y / norm, z / norm


def pairwise_haversine_km(a, b):
    """Great-circle distance matrix in km between `a (N, 2)` and `b (M, 2)`.

    The haversine formula, `2 R asin(sqrt(hav))`, with the haversine of
    each pair taken as a quarter of the squared chord between the points'
    unit vectors (`hav(theta) = sin^2(theta / 2) = |u_a - u_b|^2 / 4`):
    the trigonometry runs once per point, not per pair (on PyTorch, whose
    eager broadcasting is slower, from the coordinates). In float32 the
    distance is within ~20 m of the exact one up to 19,000 km and within
    a few km near antipodes (as `haversine_km` is within ~1 km there).

    Returns:
        float32 tensor of shape `(N, M)`.

    Example:

    >>> d = pairwise_haversine_km([[0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]])
    >>> np.round(keras.ops.convert_to_numpy(d).astype("float64"), 2).tolist()
    [[111.19, 0.0]]
    """
    if not backend.CHORD_DISTANCES:
        return haversine_km(ops.expand_dims(a, 1), ops.expand_dims(b, 0))
    a_cols = _unit_vector_columns(_to_float32(a))
    b_cols = _unit_vector_columns(_to_float32(b))
    chord2 = None
    for u, v in zip(a_cols, b_cols):
        diff = ops.expand_dims(u, 1) - ops.expand_dims(v, 0)
        chord2 = diff * diff if chord2 is None else chord2 + diff * diff
    half_chord = ops.minimum(0.5 * ops.sqrt(chord2), 1.0)
    return (2.0 * EARTH_RADIUS_KM) * _arcsin_unit(half_chord)


def unit_vectors(gps):
    """Unit vectors `(..., 3)` of (latitude, longitude) degrees `(..., 2)`.

    numpy, in the input's float precision (host-side work: nearest
    neighbours with a k-d tree, mean shift on the sphere).

    Example:

    >>> np.round(unit_vectors(np.array([[0.0, 90.0]])), 6).tolist()
    [[0.0, 1.0, 0.0]]
    """
    gps = np.asarray(gps)
    lat, lon = np.radians(gps[..., 0]), np.radians(gps[..., 1])
    return np.stack(
        [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)],
        -1,
    )


def from_unit_vectors(xyz):
    """(latitude, longitude) degrees `(..., 2)` of vectors `(..., 3)`.

    The vectors are normalised first, so any non-zero vector (such as a
    mean of unit vectors) maps to the point it points at.

    Example:

    >>> from_unit_vectors(np.array([[0.0, 0.0, 2.0]])).tolist()
    [[90.0, 0.0]]
    """
    xyz = np.asarray(xyz)
    xyz = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    lat = np.degrees(np.arcsin(np.clip(xyz[..., 2], -1.0, 1.0)))
    return np.stack([lat, np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))], -1)


def destination_point(gps, distance_km, bearing_rad):
    """Point reached from `gps` along a great circle (spherical Earth).

    Args:
        gps: tensor `(N, 2)` of (lat, lon) in degrees.
        distance_km: tensor `(N,)` of distances in km.
        bearing_rad: tensor `(N,)` of initial bearings, radians clockwise
            from north.

    Returns:
        float32 tensor `(N, 2)`; longitudes wrapped to [-180, 180).
    """
    gps = _to_float32(gps)
    deg = math.pi / 180.0
    lat1, lon1 = gps[:, 0] * deg, gps[:, 1] * deg
    delta = _to_float32(distance_km) / EARTH_RADIUS_KM
    theta = _to_float32(bearing_rad)
    sin_lat2 = ops.sin(lat1) * ops.cos(delta) + ops.cos(lat1) * ops.sin(
        delta
    ) * ops.cos(theta)
    sin_lat2 = ops.clip(sin_lat2, -1.0, 1.0)
    lat2 = ops.arcsin(sin_lat2)
    lon2 = lon1 + ops.arctan2(
        ops.sin(theta) * ops.sin(delta) * ops.cos(lat1),
        ops.cos(delta) - ops.sin(lat1) * sin_lat2,
    )
    lat2 = lat2 / deg
    lon2 = lon2 / deg
    lon2 = ops.mod(lon2 + 180.0, 360.0) - 180.0
    return ops.stack([lat2, lon2], axis=-1)


def geodesic_noise(gps, sigma_m, seed=None):
    """Perturb coordinates by isotropic Gaussian noise measured in metres.

    Each point moves by a 2-D Gaussian displacement with standard deviation
    `sigma_m` metres per axis in its local tangent plane (north, east), applied
    along the great circle, so the noise has the same ground size at every
    latitude (unlike noise in degrees). The displacement length therefore
    follows a Rayleigh law with mean `sigma_m * sqrt(pi / 2)`.

    Args:
        gps: tensor `(N, 2)` of (lat, lon) in degrees.
        sigma_m: float. Standard deviation per axis in metres. `0` returns
            `gps` unchanged.
        seed: a `keras.random.SeedGenerator` (required under JAX jit), an
            int, or None.

    Returns:
        float32 tensor `(N, 2)`.
    """
    return geodesic_noise_blocks([gps], [sigma_m], seed)


def geodesic_noise_blocks(blocks, sigmas_m, seed=None):
    """`geodesic_noise` of `sigmas_m[i]` metres on `blocks[i]`, in one pass.

    The displacements are drawn by `gv.backend.gaussian_steps`: block by
    block, in order, with Keras's samplers (the draws of separate
    `geodesic_noise` calls with the same seed); on PyTorch with a
    `SeedGenerator`, by one counter-based draw per call. All points are
    moved by one `destination_point`: one chain of operations instead of
    one per block (a training step perturbs the batch and the GPS queue).

    Args:
        blocks: list of tensors `(N_i, 2)` of (lat, lon) in degrees.
        sigmas_m: list of floats >= 0, one per block (0: left unchanged).
        seed: as in `geodesic_noise`.

    Returns:
        float32 tensor `(sum N_i, 2)`: the blocks, perturbed, concatenated.
    """
    blocks = [_to_float32(b) for b in blocks]
    gps = blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, 0)
    if not any(sigmas_m):
        return gps
    dist, bearing = backend.gaussian_steps(
        [ops.shape(b)[0] for b in blocks],
        [float(s) / 1000.0 for s in sigmas_m],
        seed,
    )
    moved = destination_point(gps, dist, bearing)
    if all(sigmas_m):
        return moved
    keep = ops.concatenate(
        [
            ops.full((ops.shape(b)[0], 1), not s)
            for b, s in zip(blocks, sigmas_m)
        ]
    )
    return ops.where(keep, gps, moved)
