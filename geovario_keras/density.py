"""Kernel density of locations on the sphere, its modes, distinct top-k.

The numpy pieces of reference and hybrid prediction
(`geovario_keras.retrieval`): the neighbours of a query vote for a Gaussian
kernel density of locations, whose modes are found by mean shift on the
sphere; candidates are then ranked with repeats counted once.
"""

import numpy as np
from keras import ops

from geovario_keras import geo


def kernel(d_km, bandwidth_km):
    return np.exp(-0.5 * np.square(d_km / bandwidth_km))


def neighbour_density(candidates, neighbours, weights, bandwidth_km):
    """Weighted Gaussian kernel density of `neighbours` at `candidates`.

    Args:
        candidates: `(N, C, 2)` degrees.
        neighbours: `(N, K, 2)` degrees.
        weights: `(N, K)`, rows summing to 1.
        bandwidth_km: float. Kernel `exp(-d^2 / (2 bandwidth_km^2))`, `d`
            the great-circle distance.

    Returns:
        `(N, C)` densities in [0, 1].
    """
    d = geo.haversine_km(candidates[:, :, None, :], neighbours[:, None, :, :])
    d = ops.convert_to_numpy(d).astype("float64")
    return np.einsum("nck,nk->nc", kernel(d, bandwidth_km), weights)


def density_modes(neighbours, weights, bandwidth_km, steps=10):
    """Modes of `neighbour_density`, by mean shift from each neighbour.

    Each step moves a point to the kernel-weighted mean of the neighbours
    (as unit vectors, projected back onto the sphere): Comaniciu & Meer's
    mean shift, which climbs the Gaussian kernel density to a mode (for
    distances much smaller than the Earth's radius the sphere is locally
    flat). A mode that ends within a tenth of the bandwidth of a neighbour
    or of an earlier mode is merged into it (given its exact coordinates),
    so one place is one candidate.

    Args:
        neighbours: `(N, K, 2)` degrees.
        weights: `(N, K)`, rows summing to 1.
        bandwidth_km: float. As in `neighbour_density`.
        steps: int >= 1. Mean-shift iterations.

    Returns:
        `(N, K, 2)` degrees, float64: the mode reached from each neighbour.

    Example:

    Three neighbours of one query, two 40 km apart on the equator and one
    far away with little weight: the climbs from the first two meet
    halfway between them, the third stays on its own.

    >>> near = np.array([[[0.0, 10.0], [0.0, 10.36], [30.0, 40.0]]])
    >>> modes = density_modes(near, np.array([[0.45, 0.45, 0.1]]), 75.0)
    >>> np.round(modes[0], 2).tolist()
    [[0.0, 10.18], [0.0, 10.18], [30.0, 40.0]]
    """
    neighbours = np.asarray(neighbours, "float64")
    unit = geo.unit_vectors(neighbours)
    points = neighbours
    for _ in range(steps):
        d = geo.haversine_km(points[:, :, None, :], neighbours[:, None, :, :])
        d = ops.convert_to_numpy(d).astype("float64")
        k = kernel(d, bandwidth_km) * weights[:, None, :]
        mean = np.einsum("nck,nkd->ncd", k, unit)
        # A point no weighted neighbour reaches (its own weight 0, the rest
        # far beyond the bandwidth) stays where it is, rather than NaN.
        moved = np.linalg.norm(mean, axis=-1, keepdims=True) > 1e-300
        points = np.where(
            moved, geo.from_unit_vectors(np.where(moved, mean, 1.0)), points
        )
    # Merge: a mode within a tenth of the bandwidth of a neighbour, or of
    # an earlier mode, takes its exact coordinates.
    both = np.concatenate([neighbours, points], axis=1)
    d = geo.haversine_km(points[:, :, None, :], both[:, None, :, :])
    k = points.shape[1]
    close = ops.convert_to_numpy(d) <= 0.1 * bandwidth_km
    close[:, :, k:] &= np.tri(k, dtype=bool)  # earlier modes and itself
    first = close.argmax(-1)  # the first close point (itself at worst)
    return np.take_along_axis(both, first[..., None], axis=1)


def repeats(coords):
    """`(N, C)` True where a candidate equals an earlier one of its row.

    Sorted per row by (lat, lon, position), so that equal candidates are
    adjacent with the earliest first: O(C log C) per row, not the C x C
    comparison (which took half of a hybrid prediction's time).
    """
    n, c = coords.shape[:2]
    position = np.broadcast_to(np.arange(c), (n, c))
    order = np.lexsort((position, coords[..., 1], coords[..., 0]), axis=-1)
    ranked = np.take_along_axis(coords, order[..., None], axis=1)
    same = (ranked[:, 1:] == ranked[:, :-1]).all(-1)
    repeat = np.zeros((n, c), bool)
    np.put_along_axis(repeat, order[:, 1:], same, axis=1)
    return repeat


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def distinct_top_k(coords, scores, top_k):
    """The `top_k` best distinct coordinates of each row, best first.

    A candidate equal to a better-scored one of its row is skipped; rows
    with fewer than `top_k` distinct coordinates are padded with the
    skipped repeats, so the output stays rectangular.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    coords = np.take_along_axis(coords, order[..., None], axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    pick = np.argsort(repeats(coords), axis=1, kind="stable")[:, :top_k]
    return (
        np.take_along_axis(coords, pick[..., None], axis=1).astype("float32"),
        np.take_along_axis(scores, pick, axis=1),
    )
