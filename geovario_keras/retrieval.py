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
from geovario_keras.density import density_modes
from geovario_keras.density import distinct_top_k
from geovario_keras.density import neighbour_density
from geovario_keras.density import repeats
from geovario_keras.density import softmax
from geovario_keras.utils import check_positive

MODES = ("gallery", "reference", "hybrid")


@dataclasses.dataclass(frozen=True)
class RetrievalOptions:
    """Settings of `"reference"` and `"hybrid"` prediction.

    The defaults were chosen on validation splits of the default Blue
    Marble training set (`benchmarks/studies/retrieval_options.py`; the
    test split was not used; BENCHMARKS.md). 10 mean-shift steps take
    `"reference"` from 0 % to 8-10 % within 25 km; a bandwidth of 100 km
    placed more images within 25 km than 50, 75 or 150 km, with no loss
    at 200-2500 km; 128 gallery candidates did better than 32. The hybrid's
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


def nearest_references(
    reference, image_embeddings, scale, options, batch_size=None
):
    """The `options.neighbours` reference images most similar to each
    query: coords `(N, K, 2)` float64 and softmax weights `(N, K)`.

    Args:
        reference: the model's `ReferenceSet` (embeddings and coords).
        image_embeddings: `(N, D)` normalised query embeddings.
        scale: float. The logit scale, `exp(logit_scale)`.
        options: `RetrievalOptions`.
        batch_size: queries per search step (None: automatic).
    """
    reference.check_top_k(options.neighbours, name="neighbours")
    logits, index, _ = reference.search(
        image_embeddings, scale, options.neighbours, batch_size
    )
    coords = reference.coords_at(index).astype("float64")
    return coords, softmax(logits.astype("float64"))


def neighbours(model, image_embeddings, options, batch_size=None):
    """`nearest_references` over `model`'s reference set and logit scale."""
    return nearest_references(
        model.reference, image_embeddings, _scale(model), options, batch_size
    )


def _check_top_k(top_k, limit, what, mode):
    if not 1 <= top_k <= limit:
        raise ValueError(
            f"`top_k` must be an int in [1, {limit}] ({what}) with "
            f"mode={mode!r}; got {top_k!r}."
        )


def predict_from_gallery(
    gallery, image_embeddings, temperature, top_k, batch_size=None
):
    """GeoCLIP's prediction: the top-k gallery points by logit."""
    gallery.check_top_k(top_k)
    return gallery.retrieve(image_embeddings, temperature, top_k, batch_size)


def predict_from_reference(
    reference, image_embeddings, scale, top_k, options, batch_size=None
):
    """Voting over the nearest reference images: the top-k candidates
    (neighbours and their density's modes) by kernel density."""
    near, weights = nearest_references(
        reference, image_embeddings, scale, options, batch_size
    )
    candidates = _neighbour_candidates(near, weights, options)
    _check_top_k(
        top_k, options.neighbours, "the number of neighbours", "reference"
    )
    density = neighbour_density(candidates, near, weights, options.bandwidth_km)
    coords, score = distinct_top_k(candidates, density, top_k)
    total = np.where(repeats(candidates), 0.0, density).sum(
        axis=1, keepdims=True
    )
    return coords, (score / total).astype("float32")


def predict_hybrid(
    gallery,
    reference,
    encode_location,
    image_embeddings,
    scale,
    top_k,
    options,
    batch_size=None,
):
    """Gallery and reference candidates scored together: the location
    encoder's logit (weighted by `options.location_weight`) plus the log of
    the neighbours' kernel density."""
    near, weights = nearest_references(
        reference, image_embeddings, scale, options, batch_size
    )
    candidates = _neighbour_candidates(near, weights, options)
    g = min(options.gallery_candidates, gallery.size)
    _check_top_k(
        top_k,
        g + options.neighbours,
        "gallery candidates + neighbours",
        "hybrid",
    )
    # Gallery candidates keep their scores from the cached gallery; only
    # the neighbours' locations and modes are encoded here.
    gallery_logits, index, _ = gallery.search(
        image_embeddings, scale, g, batch_size
    )
    gallery_coords = gallery.coords_at(index)
    n, k = candidates.shape[:2]
    near_loc = encode_location(candidates.reshape(-1, 2).astype("float32"))
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
    probs = softmax(np.where(repeats(candidates), -np.inf, score))
    coords, p = distinct_top_k(candidates, probs, top_k)
    return coords, p.astype("float32")


# Queries re-ranked at once by "reference" and "hybrid" (bounds the
# candidate arrays: 4096 x 160 candidates x 16 neighbours).
RERANK_QUERY_BLOCK = 4096


def _in_query_blocks(predict_block, image_embeddings):
    """`predict_block` over blocks of `RERANK_QUERY_BLOCK` queries."""
    if len(image_embeddings) <= RERANK_QUERY_BLOCK:
        return predict_block(image_embeddings)
    parts = [
        predict_block(image_embeddings[i : i + RERANK_QUERY_BLOCK])
        for i in range(0, len(image_embeddings), RERANK_QUERY_BLOCK)
    ]
    return tuple(np.concatenate(p) for p in zip(*parts))


def check_mode(model, mode):
    """Refuses an unknown `mode`, or one whose points `model` lacks."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if mode != "gallery" and model.reference.size == 0:
        raise ValueError(
            f"`mode={mode!r}` needs a reference set of geotagged images: "
            "call `model.set_reference(x, gps)` first (or use "
            "`mode='gallery'`)."
        )


def predict(model, image_embeddings, top_k, mode, options, batch_size=None):
    """Top-k coordinates and probabilities under `mode` (see module doc)."""
    check_mode(model, mode)
    if mode == "gallery":
        return predict_from_gallery(
            model.gallery,
            image_embeddings,
            model.temperature(),
            top_k,
            batch_size,
        )
    scale = _scale(model)
    if mode == "reference":

        def predict_block(queries):
            return predict_from_reference(
                model.reference, queries, scale, top_k, options, batch_size
            )

    else:

        def predict_block(queries):
            return predict_hybrid(
                model.gallery,
                model.reference,
                model.encode_location,
                queries,
                scale,
                top_k,
                options,
                batch_size,
            )

    return _in_query_blocks(predict_block, image_embeddings)


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

    def set_reference(
        self, x, gps, batch_size=None, verbose="auto", dtype=None
    ):
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
            dtype: None (keep the model's `reference_dtype`) or the storage
                of the embeddings from now on: `"float32"`, `"float16"`
                (half the memory; similarities still computed in float32)
                or `"bfloat16"`. Saved with the model.
        """
        gps = geo.check_gps(gps, name="gps")
        emb = self.encode_image(x, batch_size=batch_size, verbose=verbose)
        if len(emb) != len(gps):
            raise ValueError(
                f"`x` and `gps` must have the same length; got {len(emb)} "
                f"images and {len(gps)} coordinates."
            )
        # a fresh buffer
        self.reference.set(gps, emb, copy=False, embeddings_dtype=dtype)

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
