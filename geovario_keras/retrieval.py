"""Retrieval-augmented prediction: gallery, reference neighbours, hybrid.

GeoCLIP predicts by retrieval over a gallery of GPS coordinates scored by
the location encoder. Current systems (Img2Loc, G3, Pinpoint) also
retrieve the *geotagged images* most similar to the query before deciding.
`GeoCLIP.predict_gps(x, mode=...)` offers the three:

- `"gallery"`: GeoCLIP. Softmax over the whole gallery of
  `exp(logit_scale) * cos(image, location)`.
- `"reference"`: neighbour voting. The `neighbours` most similar reference
  images (cosine of image embeddings; `GeoCLIP.set_reference`) vote with
  weights `softmax(exp(logit_scale) * similarity)` for a Gaussian kernel
  density of locations, `density(c) = sum_i w_i exp(-d(c, n_i)^2 / (2
  bandwidth_km^2))`. The candidates are the neighbours' locations and the
  density's modes, found by mean shift from each neighbour (the weighted
  mean of the neighbours, iterated; `mean_shift_steps`). A mode usually
  lies *between* the neighbours, so this can place an image closer than
  any single neighbour is. The densest `top_k` distinct candidates are
  returned (probabilities: the densities, normalised over the distinct
  candidates).
- `"hybrid"`: candidates are the `gallery_candidates` best gallery points,
  the neighbours' locations and the density's modes; each candidate `c` is
  re-scored by the location encoder and the neighbours' agreement,
  `location_weight * exp(logit_scale) * cos(image, loc(c)) +
  log(density(c) + floor)`, a product of the two experts (`floor` keeps a
  candidate no neighbour supports alive; `location_weight` tempers the
  location encoder: 1 is the plain product, the default 0.01 lets the
  density decide and the location encoder break its ties, as chosen on
  validation data, see `RetrievalOptions`). Probabilities: softmax over
  the distinct candidates.

Everything runs on blocks of queries, and the gallery and reference
searches are chunked (`GPSGallery.search`), so memory stays bounded for
galleries and reference sets of millions.
"""

import dataclasses

import numpy as np
from keras import ops

from geovario_keras import geo
from geovario_keras.utils import check_positive

MODES = ("gallery", "reference", "hybrid")


@dataclasses.dataclass(frozen=True)
class RetrievalOptions:
    """Settings of `"reference"` and `"hybrid"` prediction.

    The defaults were chosen on validation splits of the default Blue
    Marble training set (`benchmarks/retrieval_options.py`; the test split
    was not used; BENCHMARKS.md). 10 mean-shift steps take `"reference"`
    from 0 % to 8-10 % within 25 km; a bandwidth of 100 km placed more
    images within 25 km than 50, 75 or 150 km, with no loss at
    200-2500 km; 128 gallery candidates did better than 32. The hybrid's
    `location_weight`: over two splits and both losses, every weight from
    0.02 to 1 cost accuracy within 25 km (1: 2-3 points fewer than the
    density alone; the location encoder's scores differ more between
    nearby candidates than its precision at that scale warrants), 0 was
    best (+0.2 over 0.01), and all tied at 200-2500 km. The default 0.01
    keeps the location encoder as the tie-breaker among candidates the
    neighbours support equally (such as gallery places far from every
    neighbour). With another model or data, choose them on a validation
    split in the same way.

    Attributes:
        neighbours: int >= 1. Reference images retrieved per query.
        bandwidth_km: float > 0. Standard deviation of the Gaussian kernel
            of the neighbours' density (km).
        gallery_candidates: int >= 1. Gallery points re-scored by
            `"hybrid"` (capped at the gallery size).
        floor: float > 0. Density added before the log in `"hybrid"`.
        location_weight: float >= 0. Weight of the location encoder's
            logits in `"hybrid"` (0: the candidates are ranked by the
            neighbours' density alone; 1: the plain product of experts).
        mean_shift_steps: int >= 0. Mean-shift iterations from each
            neighbour towards a mode of the density; 0: no mode
            candidates, only the neighbours' locations.
    """

    neighbours: int = 16
    bandwidth_km: float = 100.0
    gallery_candidates: int = 128
    floor: float = 0.01
    mean_shift_steps: int = 10
    location_weight: float = 0.01

    def __post_init__(self):
        for name in ("neighbours", "gallery_candidates"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(
                    f"`{name}` must be an int >= 1; got {value!r}."
                )
        steps = self.mean_shift_steps
        if not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(
                f"`mean_shift_steps` must be an int >= 0; got {steps!r}."
            )
        for name in ("bandwidth_km", "floor"):
            check_positive(name, getattr(self, name))
        check_positive("location_weight", self.location_weight, True)


def _kernel(d_km, bandwidth_km):
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
    return np.einsum("nck,nk->nc", _kernel(d, bandwidth_km), weights)


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
        k = _kernel(d, bandwidth_km) * weights[:, None, :]
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


def _repeats(coords):
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


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _distinct_top_k(coords, scores, top_k):
    """The `top_k` best distinct coordinates of each row, best first.

    A candidate equal to a better-scored one of its row is skipped; rows
    with fewer than `top_k` distinct coordinates are padded with the
    skipped repeats, so the output stays rectangular.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    coords = np.take_along_axis(coords, order[..., None], axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    pick = np.argsort(_repeats(coords), axis=1, kind="stable")[:, :top_k]
    return (
        np.take_along_axis(coords, pick[..., None], axis=1).astype("float32"),
        np.take_along_axis(scores, pick, axis=1),
    )


def _neighbour_candidates(near, weights, options):
    """The neighbours' locations, and their density's modes if enabled."""
    if not options.mean_shift_steps:
        return near
    modes = density_modes(
        near, weights, options.bandwidth_km, options.mean_shift_steps
    )
    return np.concatenate([near, modes], axis=1)


def _scale(model):
    """The model's logit scale, `exp(logit_scale)`, as a float."""
    return float(ops.convert_to_numpy(model.temperature()))


def neighbours(model, image_embeddings, options, batch_size=None):
    """Nearest reference images: coords `(N, K, 2)`, weights `(N, K)`."""
    refs = model.reference
    refs.check_top_k(options.neighbours, name="neighbours")
    logits, index, _ = refs.search(
        image_embeddings, _scale(model), options.neighbours, batch_size
    )
    coords = ops.convert_to_numpy(refs.coords)[index].astype("float64")
    return coords, _softmax(logits.astype("float64"))


# Queries re-ranked at once by "reference" and "hybrid" (bounds the
# candidate arrays: 4096 x 160 candidates x 16 neighbours).
QUERY_BLOCK = 4096


def predict(model, image_embeddings, top_k, mode, options, batch_size=None):
    """Top-k coordinates and probabilities under `mode` (see module doc)."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if mode != "gallery" and len(image_embeddings) > QUERY_BLOCK:
        parts = [
            predict(
                model,
                image_embeddings[i : i + QUERY_BLOCK],
                top_k,
                mode,
                options,
                batch_size,
            )
            for i in range(0, len(image_embeddings), QUERY_BLOCK)
        ]
        return tuple(np.concatenate(p) for p in zip(*parts))
    if mode == "gallery":
        model.gallery.check_top_k(top_k)
        return model.gallery.retrieve(
            image_embeddings, model.temperature(), top_k, batch_size
        )
    if model.reference.size == 0:
        raise ValueError(
            f"`mode={mode!r}` needs a reference set of geotagged images: "
            "call `model.set_reference(x, gps)` first (or use "
            "`mode='gallery'`)."
        )
    near, weights = neighbours(model, image_embeddings, options, batch_size)
    candidates = _neighbour_candidates(near, weights, options)
    if mode == "reference":
        if not 1 <= top_k <= options.neighbours:
            raise ValueError(
                f"`top_k` must be an int in [1, {options.neighbours}] (the "
                f"number of neighbours) with mode='reference'; got "
                f"{top_k!r}."
            )
        density = neighbour_density(
            candidates, near, weights, options.bandwidth_km
        )
        coords, score = _distinct_top_k(candidates, density, top_k)
        total = np.where(_repeats(candidates), 0.0, density).sum(
            axis=1, keepdims=True
        )
        return coords, (score / total).astype("float32")
    g = min(options.gallery_candidates, model.gallery.size)
    if not 1 <= top_k <= g + options.neighbours:
        raise ValueError(
            f"`top_k` must be an int in [1, {g + options.neighbours}] "
            f"(gallery candidates + neighbours) with mode='hybrid'; got "
            f"{top_k!r}."
        )
    # Gallery candidates keep their scores from the cached gallery; only
    # the neighbours' locations and modes are encoded here.
    scale = _scale(model)
    gallery_logits, index, _ = model.gallery.search(
        image_embeddings, scale, g, batch_size
    )
    gallery_coords = ops.convert_to_numpy(model.gallery.coords)[index]
    n, k = candidates.shape[:2]
    near_loc = model.encode_location(
        candidates.reshape(-1, 2).astype("float32")
    )
    near_logits = scale * np.einsum(
        "nkd,nd->nk",
        near_loc.reshape(n, k, -1),
        np.asarray(image_embeddings, "float32"),
    )
    candidates = np.concatenate(
        [gallery_coords.astype("float64"), candidates], 1
    )
    logits = np.concatenate([gallery_logits, near_logits], 1)
    density = neighbour_density(candidates, near, weights, options.bandwidth_km)
    score = options.location_weight * logits + np.log(density + options.floor)
    # A candidate repeated (a mode reached from several neighbours, a
    # neighbour at a gallery point) counts once in the softmax.
    probs = _softmax(np.where(_repeats(candidates), -np.inf, score))
    coords, p = _distinct_top_k(candidates, probs, top_k)
    return coords, p.astype("float32")


class RetrievalMixin:
    """`set_gallery`, `set_reference` and `predict_gps` of `GeoCLIP`.

    Needs `encode_image`, `encode_location`, `temperature`, and the
    `gallery` and `reference` layers of the model.
    """

    def set_gallery(self, gps, batch_size=4096, verbose="auto"):
        """Encodes `gps` once and caches it as the retrieval gallery.

        The coordinates and normalised embeddings become model state (saved
        with the model); call again after further training to refresh.

        Args:
            gps: `(M, 2)` latitude, longitude in degrees, `M >= 1`.
            batch_size: int. Gallery points encoded per step.
            verbose: Keras progress-bar verbosity.
        """
        gps = geo.check_gps(gps, name="gps")
        embeddings = self.encode_location(gps, batch_size, verbose)
        self.gallery.set(gps, embeddings, copy=False)  # a fresh buffer

    def set_reference(self, x, gps, batch_size=None, verbose="auto"):
        """Encodes geotagged images `x` at `gps` as the reference set.

        Their normalised image embeddings and coordinates become model
        state (saved with the model, exported with it), used by
        `predict_gps(mode="reference" | "hybrid")`. Typically the training
        set; call again after further training to refresh.

        Args:
            x: `M >= 1` images or features accepted by the image encoder.
            gps: `(M, 2)` latitude, longitude in degrees.
            batch_size: int or None. Images encoded per step.
            verbose: Keras progress-bar verbosity.
        """
        gps = geo.check_gps(gps, name="gps")
        emb = self.encode_image(x, batch_size=batch_size, verbose=verbose)
        if len(emb) != len(gps):
            raise ValueError(
                f"`x` and `gps` must have the same length; got {len(emb)} "
                f"images and {len(gps)} coordinates."
            )
        self.reference.set(gps, emb, copy=False)  # a fresh buffer

    def predict_gps(
        self,
        x,
        top_k=5,
        mode="gallery",
        batch_size=None,
        verbose=0,
        crops=False,
        **options,
    ):
        """Top-k coordinates and probabilities for each input.

        Args:
            x: images or features accepted by the image encoder; with
                `crops=True`, an array `(N, C, ...)` of `C` crops (views)
                of each of `N` images (`gv.data.five_crop`,
                `gv.data.ten_crop`).
            top_k: int >= 1. Predictions per input.
            mode: `"gallery"` (GeoCLIP: softmax over the whole gallery),
                `"reference"` (neighbour voting over the reference set) or
                `"hybrid"` (gallery and neighbour candidates re-scored by
                both); see `gv.retrieval`. The last two need
                `set_reference`.
            batch_size: int or None. Inputs per step (encoding, scoring).
            verbose: Keras progress-bar verbosity of the image encoding.
            crops: bool. Multi-crop prediction, as GeoCLIP evaluates:
                every logit (gallery, reference neighbours, hybrid
                candidates) is averaged over the `C` crops of an image
                before the softmax. Logits are linear in the image
                embedding, so this scores the mean of the crops'
                normalised embeddings.
            **options: `gv.retrieval.RetrievalOptions` fields
                (`neighbours`, `bandwidth_km`, `gallery_candidates`,
                `floor`, `mean_shift_steps`, `location_weight`).

        Returns:
            `(coords (N, top_k, 2), probs (N, top_k))` numpy, best first.
        """
        options = RetrievalOptions(**options)
        if mode == "gallery":
            self.gallery.check_top_k(top_k)
        if crops:
            img = self._mean_crop_embedding(x, batch_size, verbose)
        else:
            img = self.encode_image(x, batch_size=batch_size, verbose=verbose)
        return predict(self, img, top_k, mode, options, batch_size)

    def _mean_crop_embedding(self, x, batch_size, verbose):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) < 3:
            raise ValueError(
                "With `crops=True`, `x` must be an array of shape (N, C, ...)"
                " (C crops of each of N images); got "
                f"{'shape ' + str(tuple(shape)) if shape else type(x)}."
            )
        n, c = int(shape[0]), int(shape[1])
        flat = np.reshape(ops.convert_to_numpy(x), (n * c,) + tuple(shape[2:]))
        emb = self.encode_image(flat, batch_size=batch_size, verbose=verbose)
        return emb.reshape(n, c, -1).mean(axis=1)
