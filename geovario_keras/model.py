"""GeoCLIP: image and GPS encoders aligned by a contrastive loss."""

import math

import keras
import numpy as np
from keras import ops

from geovario_keras import geo
from geovario_keras.api_export import register
from geovario_keras.layers.gps_gallery import GPSGallery
from geovario_keras.layers.gps_queue import GPSQueue
from geovario_keras.layers.image_encoder import ImageEncoder
from geovario_keras.layers.location_encoder import LocationEncoder
from geovario_keras.losses import MASKED_LOGIT
from geovario_keras.losses import GeoContrastiveLoss
from geovario_keras.semivariogram.state import SemivariogramState
from geovario_keras.utils import check_int

# CLIP caps the learned temperature at 100 (logit_scale <= log 100).
_MAX_LOGIT_SCALE = math.log(100.0)


def _normalized(embeddings):
    """L2-normalised float32 embeddings (the model's output convention)."""
    return ops.normalize(ops.cast(embeddings, "float32"), axis=-1)


def _is_array_like(y):
    return isinstance(y, (np.ndarray, list, tuple)) or (
        keras.backend.is_tensor(y) and not isinstance(y, keras.KerasTensor)
    )


@register
class GeoCLIP(keras.Model):
    """GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023) as a Keras 3 model.

    An image encoder and a GPS location encoder produce L2-normalised
    embeddings; `exp(logit_scale) * img . loc` scores an image against a
    location. Training (`fit(x, y)`, `y` = (lat, lon) degrees) contrasts each
    image with its own GPS against the other GPS of the batch and a queue of
    recent training GPS (empty slots masked). Before scoring, batch GPS get
    `gps_noise_m[0]` metres of geodesic Gaussian noise and queue GPS
    `gps_noise_m[1]`; the queue is then refilled with the batch's clean GPS
    and (stop-gradient) image embeddings. Prediction is retrieval: a
    gallery of coordinates is encoded once by `set_gallery` and cached;
    `predict_gps` returns the top-k gallery points per image.

    `call(x)` returns the normalised image embedding, so `predict(x)` gives
    image embeddings; `encode_location(gps)` gives location embeddings.

    Coordinates given as arrays to `fit`, `evaluate`, `set_gallery` and the
    metrics are validated (a `ValueError` names the argument and the allowed
    range). Coordinates inside a `tf.data.Dataset` or `PyDataset` are not
    inspected by `fit`: validate them when the data set is built (e.g. with
    `gv.geo.check_gps`).

    Args:
        image_encoder: a `gv.layers.ImageEncoder` (or any layer mapping
            inputs to `(N, embed_dim)`); default: GeoCLIP's MLP on 768-d
            precomputed features.
        location_encoder: a `gv.layers.LocationEncoder` (or any layer
            mapping `(N, 2)` degrees to `(N, embed_dim)`); default:
            GeoCLIP's encoder.
        queue_size: int >= 0. GPS queue capacity (0 disables the queue).
        gps_noise_m: pair of floats `(batch, queue)`: standard deviation in
            metres of the training noise (paper: 150 m and 1000 m).
        logit_scale_init: float. Initial log temperature (CLIP:
            `log(1 / 0.07)`); learned, capped at `log(100)`.
        seed: int or None. Seed of the GPS noise.
        gallery_size: int. Size of the (initially zero) gallery state; set by
            `set_gallery` and recorded in the config so saved models reload.
        variogram_bins_km: distance bin edges (km) of the semivariogram
            statistics gathered during training with
            `SemivariogramContrastiveLoss`; default
            `gv.semivariogram.default_bin_edges_km()`.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    model = gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(None, embed_dim=128,
                                             hidden_units=256),
        location_encoder=gv.layers.LocationEncoder(hidden_units=256,
                                                   hidden_layers=2,
                                                   embed_dim=128),
        queue_size=1024)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=gv.losses.GeoContrastiveLoss())
    model.fit(features, gps, batch_size=128, epochs=2)
    model.set_gallery(gallery_gps)
    coords, probs = model.predict_gps(features_test, top_k=5)
    ```
    """

    def __init__(
        self,
        image_encoder=None,
        location_encoder=None,
        queue_size=4096,
        gps_noise_m=(150.0, 1000.0),
        logit_scale_init=math.log(1.0 / 0.07),
        seed=None,
        gallery_size=0,
        variogram_bins_km=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_encoder is None:
            image_encoder = ImageEncoder(None, embed_dim=512, hidden_units=768)
        if location_encoder is None:
            location_encoder = LocationEncoder()
        embed_dim = getattr(location_encoder, "embed_dim", None)
        if getattr(image_encoder, "embed_dim", embed_dim) != embed_dim:
            raise ValueError(
                "`image_encoder.embed_dim` and `location_encoder.embed_dim` "
                f"must be equal; got {image_encoder.embed_dim} and "
                f"{embed_dim}."
            )
        if embed_dim is None:
            raise ValueError(
                "`location_encoder` must have an `embed_dim` attribute."
            )
        check_int("queue_size", queue_size, 0)
        gps_noise_m = tuple(float(s) for s in gps_noise_m)
        if len(gps_noise_m) != 2 or min(gps_noise_m) < 0:
            raise ValueError(
                "`gps_noise_m` must be a pair (batch_sigma, queue_sigma) of "
                f"metres >= 0; got {gps_noise_m!r}."
            )
        self.image_encoder = image_encoder
        self.location_encoder = location_encoder
        self.embed_dim = embed_dim
        self.queue_size = queue_size
        self.gps_noise_m = gps_noise_m
        self.logit_scale_init = float(logit_scale_init)
        self.seed = seed
        self.queue = (
            GPSQueue(queue_size, feature_dim=embed_dim, name="gps_queue")
            if queue_size
            else None
        )
        self.gallery = GPSGallery(gallery_size, embed_dim, name="gallery")
        self.logit_scale = self.add_weight(
            name="logit_scale",
            shape=(),
            initializer=keras.initializers.Constant(self.logit_scale_init),
            dtype="float32",
            trainable=True,
            autocast=False,
        )
        self.noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")
        self.retrieval_error = keras.metrics.Mean(name="retrieval_km")
        self.variogram = SemivariogramState(
            variogram_bins_km, name="semivariogram"
        )

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        if not self.image_encoder.built:
            self.image_encoder.build(input_shape)
        if not self.location_encoder.built:
            self.location_encoder.build((None, 2))
        self.built = True

    def call(self, inputs, training=None):
        return _normalized(self.image_encoder(inputs, training=training))

    def temperature(self):
        """`exp(logit_scale)`, capped at 100 as in CLIP."""
        return ops.exp(ops.minimum(self.logit_scale, _MAX_LOGIT_SCALE))

    def _location_embeddings(self, gps, training=None):
        return _normalized(self.location_encoder(gps, training=training))

    # ------------------------------------------------------------- training
    def _contrastive_loss(self):
        loss = self.loss
        if loss is None:
            return GeoContrastiveLoss()
        if not isinstance(loss, GeoContrastiveLoss):
            raise ValueError(
                "GeoCLIP must be compiled with a contrastive loss from "
                "`gv.losses` (GeoContrastiveLoss or "
                f"SemivariogramContrastiveLoss); got {loss!r}."
            )
        return loss

    def candidate_logits(self, image_embeddings, gps, training=False):
        """Scores images against `[batch GPS ; queue GPS]`.

        Args:
            image_embeddings: normalised image embeddings `(B, D)`.
            gps: clean batch coordinates `(B, 2)` in degrees.
            training: bool. Adds the geodesic training noise.

        Returns:
            dict with `"logits"` `(B, B + Q)`, `"candidate_mask"` `(B + Q,)`,
            and the clean candidate coordinates `"candidate_gps"`.
        """
        gps = ops.cast(gps, "float32")
        batch = ops.shape(gps)[0]
        noisy = gps
        if training:
            noisy = geo.geodesic_noise(
                gps, self.gps_noise_m[0], self.noise_seed
            )
        candidates, clean, mask = noisy, gps, ops.ones((batch,), "bool")
        if self.queue is not None:
            queue_gps = ops.convert_to_tensor(self.queue.coords)
            noisy_queue = queue_gps
            if training:
                noisy_queue = geo.geodesic_noise(
                    queue_gps, self.gps_noise_m[1], self.noise_seed
                )
            candidates = ops.concatenate([noisy, noisy_queue], axis=0)
            clean = ops.concatenate([gps, queue_gps], axis=0)
            mask = ops.concatenate([mask, self.queue.valid_mask()], axis=0)
        loc = self._location_embeddings(candidates, training=training)
        img = ops.cast(image_embeddings, "float32")
        logits = self.temperature() * ops.matmul(img, ops.transpose(loc))
        return {
            "logits": logits,
            "candidate_mask": mask,
            "candidate_gps": clean,
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y is None:
            raise ValueError(
                "GeoCLIP is trained with `fit(x, y)` where `y` holds the "
                "(latitude, longitude) degrees of each image; got y=None."
            )
        loss_fn = self._contrastive_loss()
        gps = ops.cast(y, "float32")
        img = ops.cast(y_pred, "float32")
        scores = self.candidate_logits(img, gps, training=training)
        if loss_fn.needs_pair_statistics:
            scores.update(self.pair_statistics(img, gps, scores))
        targets = ops.arange(ops.shape(gps)[0], dtype="int32")
        loss = loss_fn(targets, scores, sample_weight=sample_weight)
        self._update_retrieval_metrics(gps, scores, sample_weight)
        if training and loss_fn.needs_pair_statistics:
            self._update_variogram_statistics(loss_fn, scores)
        if training and self.queue is not None:
            self.queue.enqueue(gps, ops.stop_gradient(img))
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def pair_statistics(self, image_embeddings, gps, scores):
        """Clean great-circle distances and visual dissimilarities per pair.

        Returns:
            dict with `"distance_km"` and `"dissimilarity"` (`1 - cos` of
            stop-gradient image embeddings; queue entries use the feature
            queue), both `(B, B + Q)`.
        """
        feats = ops.stop_gradient(ops.cast(image_embeddings, "float32"))
        cand_feats = feats
        if self.queue is not None:
            cand_feats = ops.concatenate(
                [feats, ops.convert_to_tensor(self.queue.features)], axis=0
            )
        dissimilarity = 1.0 - ops.matmul(feats, ops.transpose(cand_feats))
        distance = geo.pairwise_haversine_km(gps, scores["candidate_gps"])
        queue_full = ops.ones((), "float32")
        if self.queue is not None:
            queue_full = ops.cast(
                self.queue.count >= self.queue_size, "float32"
            )
        return {
            "distance_km": distance,
            "dissimilarity": dissimilarity,
            "variogram": ops.convert_to_tensor(self.variogram.params),
            "queue_full": queue_full,
        }

    def _update_variogram_statistics(self, loss_fn, scores):
        # Negative pairs: real candidates other than the row's own GPS.
        mask = scores["candidate_mask"]
        batch = ops.shape(scores["logits"])[0]
        rows = ops.expand_dims(ops.arange(batch, dtype="int32"), 1)
        cols = ops.expand_dims(ops.arange(ops.shape(mask)[0], dtype="int32"), 0)
        negative = ops.logical_and(rows != cols, ops.expand_dims(mask, 0))
        self.variogram.accumulate(
            scores["distance_km"], scores["dissimilarity"], negative
        )
        false, hard = loss_fn.classify_negatives(scores)
        self.variogram.count_negatives(
            ops.sum(ops.cast(negative, "float32")),
            ops.sum(ops.cast(false & negative, "float32")),
            ops.sum(ops.cast(hard & negative, "float32")),
        )

    def _update_retrieval_metrics(self, gps, scores, sample_weight):
        # In-batch retrieval: each image's best-scoring real candidate among
        # [batch ; queue]. Updated here rather than in `compute_metrics`
        # because only here are the encoder weights readable on every backend
        # (JAX passes them into `compute_loss` only); metric updates made here
        # are carried out of the step on TensorFlow, JAX and PyTorch.
        logits = ops.stop_gradient(scores["logits"])
        logits = ops.where(scores["candidate_mask"], logits, MASKED_LOGIT)
        best = ops.argmax(logits, axis=-1)
        retrieved = ops.take(scores["candidate_gps"], best, axis=0)
        self.retrieval_error.update_state(geo.haversine_km(gps, retrieved))
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(gps, retrieved, sample_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Metrics were updated in `compute_loss`; compiled metrics there see
        # (true GPS, GPS retrieved in-batch), not the image embeddings.
        # Keras calls this once symbolically to build metric state: build the
        # compiled metrics for (GPS, GPS) pairs then.
        if (
            self._compile_metrics is not None
            and not self._compile_metrics.built
        ):
            self._compile_metrics.build(y, y)
        return self.get_metrics_result()

    def fit(self, x=None, y=None, *args, **kwargs):
        if y is not None and _is_array_like(y):
            geo.check_gps(y, name="y")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        if y is not None and _is_array_like(y):
            geo.check_gps(y, name="y")
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------ inference
    def encode_image(self, x, batch_size=None, verbose=0):
        """Normalised image embeddings `(N, D)` as numpy.

        Arrays and tensors go through one cached compiled function (see
        `encode_location`), which keeps a single query in the milliseconds;
        anything else (`tf.data.Dataset`, `PyDataset`, generators) through
        `predict`, whose result is the same.

        Args:
            x: images or features accepted by the image encoder.
            batch_size: int or None (32). Inputs per step.
            verbose: Keras progress-bar verbosity.
        """
        arrays = isinstance(x, np.ndarray) or (
            keras.backend.is_tensor(x) and not isinstance(x, keras.KerasTensor)
        )
        # An unbuilt image encoder is built by `predict` on first use.
        if arrays and self.image_encoder.built:
            x = ops.convert_to_numpy(x)
            if len(x) == 0:
                return np.zeros((0, self.embed_dim), "float32")
            fn = self._inference_function("image_encoder")
            batch_size = 32 if batch_size is None else batch_size
            return self._batched(fn, x, batch_size, verbose)
        return self.predict(x, batch_size=batch_size, verbose=verbose)

    def encode_location(self, gps, batch_size=4096, verbose=0):
        """Normalised location embeddings `(N, D)` of `gps` as numpy.

        Args:
            gps: `(N, 2)` latitude, longitude in degrees.
            batch_size: int. Points encoded per step.
            verbose: Keras progress-bar verbosity.
        """
        gps = geo.check_gps(gps, name="gps")
        return self._encode_checked_location(gps, batch_size, verbose)

    def _inference_function(self, name):
        """`fn(batch) -> normalised float32 embeddings` of `self.<name>`.

        Compiled once per encoder and cached, outside Keras tracking. JAX:
        one `jax.jit` that takes the variable values as arguments, so it
        always sees the current weights. TensorFlow: one `tf.function`
        (variables are read live); XLA only if the model was compiled with
        `jit_compile=True` (Keras's "auto" does so only with a GPU; on CPUs
        the plain graph was the faster here). PyTorch: eager, `no_grad`.
        """
        cache = self.__dict__.setdefault("_inference_functions", {})
        layer = getattr(self, name)
        if name in cache and cache[name][0] is layer:
            return cache[name][1]
        if not layer.built:  # only the location encoder can be unbuilt
            layer.build((None, 2))

        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            def stateless(trainable, non_trainable, x):
                mapping = list(zip(layer.trainable_variables, trainable))
                mapping += zip(layer.non_trainable_variables, non_trainable)
                with keras.StatelessScope(state_mapping=mapping):
                    return _normalized(layer(x, training=False))

            jitted = jax.jit(stateless)

            def fn(x):
                return jitted(
                    [v.value for v in layer.trainable_variables],
                    [v.value for v in layer.non_trainable_variables],
                    x,
                )

        elif backend == "tensorflow":
            import tensorflow as tf

            fn = tf.function(
                lambda x: _normalized(layer(x, training=False)),
                jit_compile=getattr(self, "_jit_compile", None) is True,
                reduce_retracing=True,
            )
        elif backend == "torch":
            import torch

            def fn(x):
                with torch.no_grad():
                    return _normalized(layer(x, training=False))

        else:

            def fn(x):
                return _normalized(layer(x, training=False))

        cache[name] = (layer, fn)
        return fn

    def _batched(self, fn, x, batch_size, verbose):
        # A plain batched loop rather than `predict`: no data adapter,
        # callbacks or final concatenation (over the 100K gallery on 2 CPU
        # cores, ~10 % faster; one query, TensorFlow: ~90 ms less), the last
        # batch padded to the full size (no second compilation), and the
        # next batch dispatched before the previous one is read back (JAX
        # and GPUs run asynchronously).
        check_int("batch_size", batch_size)
        n = len(x)
        out = np.empty((n, self.embed_dim), "float32")
        batch_size = min(batch_size, n)
        progbar = None
        if verbose not in (0, "silent") and n > batch_size:
            progbar = keras.utils.Progbar(
                n, verbose=1 if verbose == "auto" else verbose
            )
        pending = None
        for start in range(0, n, batch_size):
            chunk = x[start : start + batch_size]
            size = len(chunk)
            if size < batch_size:
                pad = np.zeros((batch_size - size,) + chunk.shape[1:])
                chunk = np.concatenate([chunk, pad.astype(chunk.dtype)])
            result = fn(ops.convert_to_tensor(chunk))
            if pending is not None:
                self._store(out, *pending, progbar)
            pending = (start, size, result)
        if pending is not None:
            self._store(out, *pending, progbar)
        return out

    @staticmethod
    def _store(out, start, size, result, progbar):
        out[start : start + size] = ops.convert_to_numpy(result)[:size]
        if progbar is not None:
            progbar.update(start + size)

    def _encode_checked_location(self, gps, batch_size, verbose):
        fn = self._inference_function("location_encoder")
        gps = np.asarray(gps, "float32")
        return self._batched(fn, gps, batch_size, verbose)

    def set_gallery(self, gps, batch_size=4096, verbose="auto"):
        """Encodes `gps` once and caches it as the retrieval gallery.

        The coordinates and their normalised embeddings become model state:
        saved with `model.save`, and used by `predict_gps` without being
        re-encoded. Call again after further training to refresh.

        Args:
            gps: `(M, 2)` latitude, longitude in degrees, `M >= 1`.
            batch_size: int. Gallery points encoded per step.
            verbose: Keras progress-bar verbosity.
        """
        gps = geo.check_gps(gps, name="gps")
        emb = self._encode_checked_location(gps, batch_size, verbose)
        self.gallery.set(gps, emb)

    def predict_gps(self, x, top_k=5, batch_size=None, verbose=0):
        """Top-k gallery coordinates and probabilities for each input.

        Probabilities are the softmax over the **whole** gallery of
        `exp(logit_scale) * img . loc`, as in GeoCLIP.

        Args:
            x: images or features accepted by the image encoder.
            top_k: int in `[1, gallery size]`.
            batch_size: int or None. Inputs per step (image encoding and
                gallery scoring).
            verbose: Keras progress-bar verbosity of the image encoding.

        Returns:
            `(coords (N, top_k, 2), probs (N, top_k))` as numpy arrays, best
            first.
        """
        self.check_top_k(top_k)
        img = self.encode_image(x, batch_size=batch_size, verbose=verbose)
        return self.rank_gallery(img, top_k=int(top_k), batch_size=batch_size)

    def check_top_k(self, top_k):
        """Raises a `ValueError` unless the gallery is set and `top_k` fits."""
        size = self.gallery.size
        if size == 0:
            raise ValueError(
                "The gallery is empty: call `model.set_gallery(gps)` with at "
                "least one point first."
            )
        if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= size:
            raise ValueError(
                f"`top_k` must be an int in [1, {size}] (the gallery size); "
                f"got {top_k!r}."
            )

    def rank_gallery(self, image_embeddings, top_k=5, batch_size=None):
        """Top-k over the cached gallery for normalised image embeddings.

        Returns:
            `(coords (N, top_k, 2), probs (N, top_k))` as numpy arrays.
        """
        # Keep each logits block near 64 MB.
        chunk = batch_size or max(1, (1 << 24) // max(self.gallery.size, 1))
        top_k_fn = self._gallery_top_k_function(top_k)
        coords, probs = [], []
        for start in range(0, len(image_embeddings), chunk):
            q = ops.convert_to_tensor(image_embeddings[start : start + chunk])
            c, p = top_k_fn(q)
            coords.append(ops.convert_to_numpy(c))
            probs.append(ops.convert_to_numpy(p))
        if not coords:
            return (
                np.zeros((0, top_k, 2), "float32"),
                np.zeros((0, top_k), "float32"),
            )
        return np.concatenate(coords), np.concatenate(probs)

    def _gallery_top_k_function(self, top_k):
        # TensorFlow: a cached `tf.function` (one query over 100K points on
        # 2 CPU cores: 24 ms against 29 ms eagerly). It reads variables
        # live, so new gallery values are seen. JAX and torch run eagerly
        # (a `jax.jit` here would freeze the gallery it traced).
        if keras.backend.backend() != "tensorflow":
            return lambda q: self.gallery_top_k(q, top_k)
        import tensorflow as tf

        # `GPSGallery.set` replaces its variables when the size changes: a
        # traced function holds the variables it saw, so key on them.
        current = (self.gallery.embeddings, self.gallery.coords)
        cache = self.__dict__.get("_top_k_functions")
        if cache is None or any(a is not b for a, b in zip(cache[0], current)):
            cache = (current, {})
            object.__setattr__(self, "_top_k_functions", cache)
        if top_k not in cache[1]:
            cache[1][top_k] = tf.function(
                lambda q: self.gallery_top_k(q, top_k), reduce_retracing=True
            )
        return cache[1][top_k]

    def gallery_top_k(self, image_embeddings, top_k, top_k_fn=None):
        """Top-k gallery coordinates and probabilities, as tensors.

        The traceable core of `rank_gallery` (and of the exported
        `predict_gps` signature): softmax over the whole gallery of
        `exp(logit_scale) * img . loc`, then the `top_k` best.

        Args:
            image_embeddings: `(N, D)` normalised image embeddings.
            top_k: int.
            top_k_fn: `fn(logits, k) -> (values, indices)`; default
                `keras.ops.top_k`.

        Returns:
            `(coords (N, top_k, 2), probs (N, top_k))` tensors.
        """
        top_k_fn = top_k_fn or (lambda x, k: ops.top_k(x, k=k))
        gallery_emb = ops.convert_to_tensor(self.gallery.embeddings)
        gallery_gps = ops.convert_to_tensor(self.gallery.coords)
        # (G @ q^T)^T, not q @ G^T: the latter makes TensorFlow and JAX copy
        # the transposed (M, D) gallery on every call (~200 ms for 100K x
        # 512 on 2 CPU cores, against ~10 ms for the whole product).
        query = ops.cast(image_embeddings, "float32")
        logits = self.temperature() * ops.transpose(
            ops.matmul(gallery_emb, ops.transpose(query))
        )
        values, index = top_k_fn(logits, top_k)
        probs = ops.exp(values - ops.logsumexp(logits, axis=-1, keepdims=True))
        return ops.take(gallery_gps, index, axis=0), probs

    # --------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_encoder": keras.saving.serialize_keras_object(
                    self.image_encoder
                ),
                "location_encoder": keras.saving.serialize_keras_object(
                    self.location_encoder
                ),
                "queue_size": self.queue_size,
                "gps_noise_m": list(self.gps_noise_m),
                "logit_scale_init": self.logit_scale_init,
                "seed": self.seed,
                "gallery_size": self.gallery.size,
                "variogram_bins_km": list(self.variogram.bin_edges_km),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_encoder", "location_encoder"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
