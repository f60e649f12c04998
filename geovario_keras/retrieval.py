"""Retrieval-augmented prediction: gallery, reference neighbours, hybrid.

GeoCLIP predicts by retrieval over a gallery of GPS coordinates scored by
the location encoder. Current systems (Img2Loc, G3, Pinpoint) also
retrieve the *geotagged images* most similar to the query before deciding.
`GeoCLIP.predict_gps(x, mode=...)` offers the three:

- `"gallery"`: GeoCLIP. Softmax over the whole gallery of
  `exp(logit_scale) * cos(image, location)`.
- `"reference"`: neighbour voting. The `neighbours` most similar reference
  images (cosine of image embeddings; `GeoCLIP.set_reference`) vote with
  weights `softmax(exp(logit_scale) * similarity)`; each neighbour's
  location is scored by the weighted kernel density of all neighbours'
  locations there, `sum_i w_i exp(-d(c, n_i) / bandwidth_km)`, and the
  densest `top_k` distinct locations are returned (probabilities: the
  densities, normalised over the neighbours' locations).
- `"hybrid"`: candidates are the `gallery_candidates` best gallery points
  and the neighbours' locations; each candidate `c` is re-scored by the
  location encoder and the neighbours' agreement,
  `exp(logit_scale) * cos(image, loc(c)) + log(density(c) + floor)`, a
  product of the two experts (`floor` keeps a candidate no neighbour
  supports alive). Probabilities: softmax over the candidates.

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

    The defaults were chosen on a validation split of the default Blue
    Marble training set (`benchmarks/retrieval_options.py`; the test split
    was not used): of bandwidths 25-400 km, floors 0.001-0.1 and 32 or 128
    gallery candidates, these gave the hybrid its best accuracy within
    25 km with no loss at 200-2500 km.

    Attributes:
        neighbours: int >= 1. Reference images retrieved per query.
        bandwidth_km: float > 0. Length scale of the neighbours' kernel
            density (km).
        gallery_candidates: int >= 1. Gallery points re-scored by
            `"hybrid"` (capped at the gallery size).
        floor: float > 0. Density added before the log in `"hybrid"`.
    """

    neighbours: int = 16
    bandwidth_km: float = 100.0
    gallery_candidates: int = 128
    floor: float = 0.01

    def __post_init__(self):
        for name in ("neighbours", "gallery_candidates"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(
                    f"`{name}` must be an int >= 1; got {value!r}."
                )
        for name in ("bandwidth_km", "floor"):
            check_positive(name, getattr(self, name))


def neighbour_density(candidates, neighbours, weights, bandwidth_km):
    """Weighted kernel density of `neighbours` at `candidates`.

    Args:
        candidates: `(N, C, 2)` degrees.
        neighbours: `(N, K, 2)` degrees.
        weights: `(N, K)`, rows summing to 1.
        bandwidth_km: float. Kernel `exp(-d / bandwidth_km)`.

    Returns:
        `(N, C)` densities in [0, 1].
    """
    d = geo.haversine_km(candidates[:, :, None, :], neighbours[:, None, :, :])
    kernel = np.exp(-ops.convert_to_numpy(d).astype("float64") / bandwidth_km)
    return np.einsum("nck,nk->nc", kernel, weights)


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
    same = (coords[:, :, None, :] == coords[:, None, :, :]).all(-1)
    repeat = np.tril(same, k=-1).any(-1)  # equals an earlier (better) one
    pick = np.argsort(repeat, axis=1, kind="stable")[:, :top_k]
    return (
        np.take_along_axis(coords, pick[..., None], axis=1).astype("float32"),
        np.take_along_axis(scores, pick, axis=1),
    )


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
# candidate arrays: 4096 x 144 candidates x 16 neighbours).
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
    if mode == "reference":
        if not 1 <= top_k <= options.neighbours:
            raise ValueError(
                f"`top_k` must be an int in [1, {options.neighbours}] (the "
                f"number of neighbours) with mode='reference'; got "
                f"{top_k!r}."
            )
        density = neighbour_density(near, near, weights, options.bandwidth_km)
        coords, score = _distinct_top_k(near, density, top_k)
        probs = score / density.sum(axis=1, keepdims=True)
        return coords, probs.astype("float32")
    g = min(options.gallery_candidates, model.gallery.size)
    if not 1 <= top_k <= g + options.neighbours:
        raise ValueError(
            f"`top_k` must be an int in [1, {g + options.neighbours}] "
            f"(gallery candidates + neighbours) with mode='hybrid'; got "
            f"{top_k!r}."
        )
    # Gallery candidates keep their scores from the cached gallery; only
    # the neighbours' locations are encoded here.
    scale = _scale(model)
    gallery_logits, index, _ = model.gallery.search(
        image_embeddings, scale, g, batch_size
    )
    gallery_coords = ops.convert_to_numpy(model.gallery.coords)[index]
    n, k = near.shape[:2]
    near_loc = model.encode_location(near.reshape(-1, 2).astype("float32"))
    near_logits = scale * np.einsum(
        "nkd,nd->nk",
        near_loc.reshape(n, k, -1),
        np.asarray(image_embeddings, "float32"),
    )
    candidates = np.concatenate([gallery_coords.astype("float64"), near], 1)
    logits = np.concatenate([gallery_logits, near_logits], 1)
    density = neighbour_density(candidates, near, weights, options.bandwidth_km)
    probs = _softmax(logits + np.log(density + options.floor))
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
                `floor`).

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
