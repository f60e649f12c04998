"""Streaming empirical semivariogram over great-circle distance bins."""

import math

import numpy as np
from keras import ops

from geovario_keras import backend
from geovario_keras import geo


def default_bin_edges_km():
    """0 to 20,100 km, finer below 1,000 km, where variograms change fastest.

    25 km steps to 100 km, 100 km steps to 1,000 km, then 250 to 500 km
    steps to 5,000 km and 1,000 to 2,500 km steps to 20,100 km (the largest
    great-circle distance is 20,015 km).
    """
    edges = [0.0, 25.0, 50.0, 75.0]
    edges += list(np.arange(100.0, 1000.0, 100.0))
    edges += list(np.arange(1000.0, 3000.0, 250.0))
    edges += list(np.arange(3000.0, 5000.0, 500.0))
    edges += [5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 12500.0, 15000.0]
    edges += [17500.0, 20100.0]
    return np.asarray(edges, "float64")


def check_bin_edges(bin_edges_km):
    if bin_edges_km is None:
        return default_bin_edges_km()
    edges = np.asarray(bin_edges_km, "float64").reshape(-1)
    if (
        edges.size < 2
        or not np.all(np.isfinite(edges))
        or edges[0] < 0
        or np.any(np.diff(edges) <= 0)
    ):
        raise ValueError(
            "`bin_edges_km` must be at least 2 finite, strictly increasing "
            f"distances >= 0 km; got {bin_edges_km!r}."
        )
    return edges


_MAX_CELLS = 1 << 16
_MAX_COMPARED_EDGES = 64


def _cell_grid(edges):
    """`(start, width, cells)` of a grid of whole kilometres on which every
    edge lies, with at most `_MAX_CELLS` cells; None if there is none."""
    if not all(float(e).is_integer() and e < 2**24 for e in edges):
        return None
    start = int(edges[0])
    width = 0
    for e in edges[1:]:
        width = math.gcd(width, int(e) - start)
    cells = (int(edges[-1]) - start) // width
    return (start, width, cells) if cells <= _MAX_CELLS else None


def _bin_index(h, edges):
    # `digitize(h, edges) - 1` (`edges[i] <= h < edges[i + 1]`: bin i).
    # PyTorch: `bucketize`, one fast operator. Under XLA (JAX; TensorFlow's
    # `backend.fused` calls), up to 64 edges: the number of edges at or
    # below h, compares that XLA fuses into one pass (half a table
    # lookup's time). Otherwise, edges on a grid of whole
    # kilometres (the default ones: 25 km): the grid cell from one
    # division, corrected by two exact comparisons, then the cell's bin
    # from a table: XLA's `digitize` (a binary search) costs ~10x more over
    # a step's 2.4 M pairs (BENCHMARKS.md).
    if backend.NATIVE_DIGITIZE:
        return ops.cast(ops.digitize(h, edges), "int32") - 1
    if backend.xla_formulation() and len(edges) <= _MAX_COMPARED_EDGES:
        index = ops.cast(h >= edges[0], "int32")
        for e in edges[1:]:
            index = index + ops.cast(h >= e, "int32")
        return index - 1
    grid = _cell_grid(edges)
    if grid is None:
        return ops.cast(ops.digitize(h, edges), "int32") - 1
    start, width, cells = grid
    c = ops.floor((h - start) * (1.0 / width))
    c = ops.where(h >= start, ops.minimum(c, float(cells)), -1.0)  # NaN: -1
    c = c - ops.cast(c * width + start > h, "float32")
    c = c + ops.cast((c + 1.0) * width + start <= h, "float32")
    c = ops.cast(ops.clip(c, -1.0, float(cells)), "int32") + 1
    # Cell k (k = 0: below the first edge; k = cells + 1: at or beyond the
    # last) -> its bin; bins below or beyond are left out by the caller.
    # Plain Python (torch.compile folds it into constants; numpy it would
    # trace as tensors).
    table, b = [], -1
    for k in range(cells + 2):
        lower = start + width * (k - 1)
        while b + 1 < len(edges) and edges[b + 1] <= lower:
            b += 1
        table.append(b)
    return ops.take(backend.constant(table, "int32", like=c), c)


def batch_statistics(distance_km, dissimilarity, bin_edges_km, mask=None):
    """Per-bin count, mean and sum of squared deviations of one batch.

    In `keras.ops`, so it runs inside a compiled training step. Pairs beyond
    the last edge, or with `mask` False, are left out.

    Args:
        distance_km: float tensor of pair distances (any shape).
        dissimilarity: float tensor of the same shape.
        bin_edges_km: sequence of `K + 1` increasing edges (static).
        mask: optional bool tensor of the same shape.

    Returns:
        `(count, mean, m2)`, float32 tensors of shape `(K,)`.
    """
    edges = [float(e) for e in bin_edges_km]
    num_bins = len(edges) - 1
    h = ops.reshape(ops.cast(distance_km, "float32"), (-1,))
    d = ops.reshape(ops.cast(dissimilarity, "float32"), (-1,))
    index = _bin_index(h, edges)
    ok = (h >= edges[0]) & (h < edges[-1])
    if mask is not None:
        ok = ok & ops.reshape(ops.cast(mask, "bool"), (-1,))
    # Left-out pairs go to an extra segment that is dropped.
    index = ops.where(ok, index, num_bins)
    w = ops.cast(ok, "float32")
    d = d * w

    def seg(values):
        return backend.segment_sum(values, index, num_bins + 1)[:num_bins]

    count = seg(w)
    total = seg(d)
    mean = total / ops.maximum(count, 1.0)
    m2 = ops.maximum(seg(d * d) - count * mean * mean, 0.0)
    return count, mean, m2


def merge(a, b, maximum=np.maximum):
    """Chan et al.'s parallel merge of `(count, mean, m2)` statistics.

    Works with numpy arrays or `keras.ops` tensors (pass
    `maximum=ops.maximum`). Merging means, not raw sums, keeps float32
    accumulators accurate over billions of pairs.
    """
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    safe_n = maximum(n, 1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / safe_n
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / safe_n
    return n, mean, m2


class EmpiricalSemivariogram:
    """Empirical semivariogram of visual dissimilarity vs distance.

    `gamma_hat(h_k)` is the mean dissimilarity of the pairs whose great-circle
    distance falls in bin `k`. For unit feature vectors the dissimilarity
    `1 - cos(f_i, f_j) = 0.5 * ||f_i - f_j||^2` is the multivariate analogue
    of the classical `0.5 * E[(Z(x) - Z(x + h))^2]` (Matheron estimator).

    Statistics (pair count, mean and spread per bin) are accumulated batch by
    batch in float64 on the host and merged exactly; no data-set-wide
    `N x N` matrix is ever built. The per-batch part
    (`batch_statistics`) is written in `keras.ops`; `GeoCLIP` runs it inside
    its compiled training step.

    Args:
        bin_edges_km: increasing bin edges in km; default
            `default_bin_edges_km()` (0 to 20,100 km, finer below 1,000 km).

    Example:

    >>> gps = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 10.0]], "float32")
    >>> features = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], "float32")
    >>> sv = EmpiricalSemivariogram([0, 500, 5000])
    >>> sv.update_from_features(gps, features)
    >>> centers, gamma, counts = sv.result()
    >>> centers.tolist(), gamma.round(3).tolist(), counts.tolist()
    ([250.0, 2750.0], [0.2, 0.7], [1.0, 2.0])
    """

    def __init__(self, bin_edges_km=None):
        self.bin_edges_km = check_bin_edges(bin_edges_km)
        self.reset()

    @property
    def num_bins(self):
        return len(self.bin_edges_km) - 1

    @property
    def centers_km(self):
        e = self.bin_edges_km
        return 0.5 * (e[1:] + e[:-1])

    def reset(self):
        k = self.num_bins
        self.count = np.zeros(k)
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)

    def update(self, distance_km, dissimilarity, mask=None):
        """Adds pairs given as matching distance / dissimilarity arrays."""
        stats = batch_statistics(
            distance_km, dissimilarity, self.bin_edges_km, mask
        )
        stats = tuple(
            np.asarray(ops.convert_to_numpy(s), "float64") for s in stats
        )
        self.merge_statistics(*stats)

    def merge_statistics(self, count, mean, m2):
        """Merges `(count, mean, m2)` arrays from another accumulator."""
        self.count, self.mean, self.m2 = merge(
            (self.count, self.mean, self.m2),
            tuple(np.asarray(s, "float64") for s in (count, mean, m2)),
        )

    def update_from_features(self, gps, features, block_size=1024):
        """Adds all pairs `i < j` of a sample of points, block by block.

        Args:
            gps: `(N, 2)` latitude, longitude in degrees.
            features: `(N, D)` feature vectors; the dissimilarity of a pair is
                `0.5 * ||f_i - f_j||^2` (= `1 - cos` for unit vectors).
            block_size: rows per block (memory is `block_size * N`).
        """
        gps = geo.check_gps(gps, name="gps")
        features = np.asarray(features, "float32")
        if features.ndim != 2 or features.shape[0] != gps.shape[0]:
            raise ValueError(
                "`features` must have shape (N, D) with N = len(gps) = "
                f"{gps.shape[0]}; got {features.shape}."
            )
        sq = np.sum(features.astype("float64") ** 2, axis=1)
        n = gps.shape[0]
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            h = geo.pairwise_haversine_km(gps[start:stop], gps)
            f = features[start:stop].astype("float64")
            d = 0.5 * (sq[start:stop, None] + sq[None, :]) - f @ features.T
            rows = np.arange(start, stop)[:, None]
            upper = np.arange(n)[None, :] > rows
            self.update(h, np.maximum(d, 0.0).astype("float32"), upper)

    def result(self, min_count=1):
        """`(centers_km, gamma, counts)` of the bins with >= `min_count`."""
        keep = self.count >= max(min_count, 1)
        return self.centers_km[keep], self.mean[keep], self.count[keep]

    def variance(self):
        """Per-bin variance of the pair dissimilarities."""
        return self.m2 / np.maximum(self.count - 1.0, 1.0)
