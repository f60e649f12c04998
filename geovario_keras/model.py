"""GeoCLIP: image and GPS encoders aligned by a contrastive loss."""

import math

import keras
import numpy as np
from keras import ops

from geovario_keras import backend
from geovario_keras import geo
from geovario_keras import inference
from geovario_keras import presets
from geovario_keras.api_export import register
from geovario_keras.callbacks import variogram_first
from geovario_keras.candidates import CANDIDATE_GPS
from geovario_keras.candidates import CANDIDATE_MASK
from geovario_keras.candidates import LOGITS
from geovario_keras.candidates import positives_and_negatives
from geovario_keras.candidates import retrieved_gps
from geovario_keras.layers.contrastive_head import ContrastiveHead
from geovario_keras.layers.contrastive_head import normalise
from geovario_keras.layers.geodesic_noise import GeodesicNoise
from geovario_keras.layers.gps_gallery import GPSGallery
from geovario_keras.layers.gps_gallery import ReferenceSet
from geovario_keras.layers.gps_queue import GPSQueue
from geovario_keras.layers.image_encoder import ImageEncoder
from geovario_keras.layers.location_encoder import LocationEncoder
from geovario_keras.losses import GeoContrastiveLoss
from geovario_keras.losses import PairStatisticsLoss
from geovario_keras.retrieval import RetrievalMixin
from geovario_keras.saving import SavingMixin
from geovario_keras.semivariogram.state import SemivariogramState
from geovario_keras.utils import check_int
from geovario_keras.utils import check_noise_pair
from geovario_keras.utils import common_embed_dim
from geovario_keras.validation import checked_arguments
from geovario_keras.validation import checked_features


@register
class GeoCLIP(SavingMixin, RetrievalMixin, keras.Model):
    """GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023) as a Keras 3 model.

    Parts: an image encoder and a location encoder; a `ContrastiveHead`
    that normalises both and scores `exp(logit_scale) * img . loc`; a
    `GPSQueue` of recent training GPS (extra negatives, empty slots
    masked); a `GPSGallery` for retrieval; a `ReferenceSet` of geotagged
    image embeddings for retrieval-augmented prediction; a
    `SemivariogramState`.

    Training (`fit(x, y)`, `y` = (lat, lon) degrees) contrasts each image
    with its own GPS against the batch's other GPS and the queue, after
    geodesic Gaussian noise of `gps_noise_m` metres (batch, queue); the
    queue is then refilled with the batch's clean GPS and stop-gradient
    image embeddings. `set_gallery` encodes a gallery once, `set_reference`
    a set of geotagged images; `predict_gps` returns the top-k locations
    per image from the gallery, the reference neighbours or both
    (`gv.retrieval`). `call(x)` (so `predict`)
    returns normalised image embeddings. Coordinate arrays are validated
    (a `ValueError` names the argument and range); coordinates inside a
    `tf.data.Dataset` or `PyDataset` are not read: check them with
    `gv.geo.check_gps` when building the data set.

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
        gallery_size, reference_size: int. Sizes of the (initially empty)
            gallery and reference states; set by `set_gallery` and
            `set_reference`, recorded in the config so saved models reload.
        variogram_bins_km: distance bin edges (km) of the semivariogram
            statistics gathered in training with a `PairStatisticsLoss`;
            default `gv.semivariogram.default_bin_edges_km()`.
        reference_dtype: `"float32"` (default), `"float16"` or
            `"bfloat16"`: storage of the reference image embeddings
            (`set_reference`). float16 halves the memory of a reference set
            of millions (5 M x 512-d: 5 GB instead of 10); similarities are
            still computed in float32 (accuracy cost: BENCHMARKS.md).
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> gps = rng.uniform([-60, -180], [60, 180], (256, 2)).astype("float32")
    >>> features = rng.normal(size=(256, 16)).astype("float32")
    >>> model = gv.GeoCLIP(
    ...     gv.layers.ImageEncoder(None, embed_dim=32, hidden_units=64),
    ...     gv.layers.LocationEncoder(num_features=32, hidden_units=64,
    ...                               hidden_layers=2, embed_dim=32),
    ...     queue_size=128)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3),
    ...               loss=gv.losses.GeoContrastiveLoss())
    >>> history = model.fit(features, gps, batch_size=64, epochs=1, verbose=0)
    >>> model.set_gallery(gps, verbose=0)
    >>> coords, probs = model.predict_gps(features[:5], top_k=3)
    >>> coords.shape, probs.shape
    ((5, 3, 2), (5, 3))
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
        reference_size=0,
        reference_dtype="float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_encoder is None:
            image_encoder = ImageEncoder(None, embed_dim=512, hidden_units=768)
        if location_encoder is None:
            location_encoder = LocationEncoder()
        self.embed_dim = common_embed_dim(image_encoder, location_encoder)
        check_int("queue_size", queue_size, 0)
        self.image_encoder = image_encoder
        self.location_encoder = location_encoder
        self.queue_size = queue_size
        self.gps_noise_m = check_noise_pair(gps_noise_m)
        self.seed = seed
        self.image_input_shape = None
        self.head = ContrastiveHead(logit_scale_init, name="head")
        self.queue = None
        if queue_size:
            self.queue = GPSQueue(queue_size, self.embed_dim, name="gps_queue")
        self.gallery = GPSGallery(gallery_size, self.embed_dim, name="gallery")
        self.reference = ReferenceSet(
            reference_size,
            self.embed_dim,
            embeddings_dtype=reference_dtype,
            name="reference",
        )
        self.noise = GeodesicNoise(seed, name="gps_noise")
        self.retrieval_error = keras.metrics.Mean(name="retrieval_km")
        self.variogram = SemivariogramState(
            variogram_bins_km, name="semivariogram"
        )

    @property
    def logit_scale(self):
        """The learned log temperature (a variable of `self.head`)."""
        return self.head.logit_scale

    def temperature(self):
        """`exp(logit_scale)`, capped at 100 as in CLIP."""
        return self.head.temperature()

    def build(self, input_shape):
        self.image_input_shape = tuple(input_shape)
        if not self.image_encoder.built:
            self.image_encoder.build(input_shape)
        if not self.location_encoder.built:
            self.location_encoder.build((None, 2))
        self.built = True

    def call(self, inputs, training=None):
        return normalise(self.image_encoder(inputs, training=training))

    def location_embeddings(self, gps, training=False):
        """Normalised location embeddings of `gps` `(N, 2)`, as a tensor."""
        return normalise(self.location_encoder(gps, training=training))

    def _contrastive_loss(self):
        loss = GeoContrastiveLoss() if self.loss is None else self.loss
        if not isinstance(loss, GeoContrastiveLoss):
            raise ValueError(
                "GeoCLIP must be compiled with a contrastive loss from "
                f"`gv.losses` (a GeoContrastiveLoss); got {loss!r}."
            )
        return loss

    def candidate_logits(self, image_embeddings, gps, training=False):
        """Scores images against `[batch GPS ; queue GPS]`.

        Args:
            image_embeddings: `(B, D)`; gps: clean batch `(B, 2)` degrees.
            training: bool. Adds the geodesic training noise.

        Returns:
            dict: `"logits"` `(B, B + Q)`, `"candidate_mask"` `(B + Q,)`,
            `"candidate_gps"` (clean).
        """
        gps = ops.cast(gps, "float32")
        parts = [(gps, ops.ones((ops.shape(gps)[0],), "bool"))]
        if self.queue is not None:
            queue_gps = ops.convert_to_tensor(self.queue.coords)
            parts.append((queue_gps, self.queue.valid_mask()))
        # Batch noise first, then queue noise, as in gps_noise_m; one pass.
        noisy = self.noise(
            [g for g, _ in parts],
            sigma_m=self.gps_noise_m[: len(parts)],
            training=training,
        )
        loc = self.location_encoder(noisy, training=training)
        return {
            LOGITS: self.head(image_embeddings, loc),
            CANDIDATE_MASK: ops.concatenate([m for _, m in parts], 0),
            CANDIDATE_GPS: ops.concatenate([g for g, _ in parts], 0),
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y is None:
            raise ValueError(
                "GeoCLIP is trained with `fit(x, y)`, `y` the (latitude, "
                "longitude) degrees of each image; got y=None."
            )
        loss_fn = self._contrastive_loss()
        pairwise = isinstance(loss_fn, PairStatisticsLoss)
        # Global negatives: under `tf.distribute` every replica gathers the
        # global batch (its loss is then scaled by 1 / replicas by Keras and
        # the gradients summed), so the loss, the queue and the variogram
        # statistics are the single-device ones. JAX sees the global batch.
        gps, img, sample_weight = backend.gather_replicas(
            ops.cast(y, "float32"), ops.cast(y_pred, "float32"), sample_weight
        )
        scores = self.candidate_logits(img, gps, training=training)
        if pairwise:
            entries = self.variogram.pair_entries
            scores.update(entries(img, gps, scores, self.queue))
        targets = ops.arange(ops.shape(gps)[0], dtype="int32")
        loss = loss_fn(targets, scores, sample_weight=sample_weight)
        self._update_retrieval_metrics(gps, scores, sample_weight)
        if training and pairwise:
            _, negatives = positives_and_negatives(
                targets, scores[LOGITS], scores[CANDIDATE_MASK]
            )
            classes = loss_fn.classify_negatives(scores)
            self.variogram.update(scores, negatives, classes)
        if training and self.queue is not None:
            self.queue.enqueue(gps, ops.stop_gradient(img))
        if self.losses:  # summed over replicas, like the loss: scaled
            loss = loss + ops.sum(self.losses) / backend.replica_count()
        return loss

    def _update_retrieval_metrics(self, gps, scores, sample_weight):
        # In-batch retrieval: each image's best real candidate among [batch ;
        # queue]. Updated here rather than in `compute_metrics` because only
        # here are the encoder weights readable on every backend (JAX passes
        # them into `compute_loss` only).
        retrieved = retrieved_gps(
            scores[LOGITS], scores[CANDIDATE_MASK], scores[CANDIDATE_GPS]
        )
        self.retrieval_error.update_state(geo.haversine_km(gps, retrieved))
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(gps, retrieved, sample_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Metrics were updated in `compute_loss`; compiled metrics there see
        # (true GPS, GPS retrieved in-batch), not the image embeddings.
        # Keras calls this once symbolically to build metric state: build the
        # compiled metrics for (GPS, GPS) pairs then.
        compiled = self._compile_metrics
        if compiled is not None and not compiled.built:
            compiled.build(y, y)
        return self.get_metrics_result()

    def train_step(self, *args, **kwargs):
        return backend.worker_logs(super().train_step(*args, **kwargs))

    def test_step(self, *args, **kwargs):
        return backend.worker_logs(super().test_step(*args, **kwargs))

    # On PyTorch with `jit_compile=True`: steps compiled without per-call
    # checks of the layers' attributes (`backend.step_function`).
    def make_train_function(self, force=False):
        super().make_train_function(force)
        self.train_function = backend.step_function(self.train_function, self)
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        self.test_function = backend.step_function(self.test_function, self)
        return self.test_function

    def make_predict_function(self, force=False):
        super().make_predict_function(force)
        self.predict_function = backend.step_function(
            self.predict_function, self
        )
        return self.predict_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow with a tf.distribute strategy (the method exists only on
        # its trainer): build from the data set's spec, not from a batch
        # averaged across replicas (which fails with several workers).
        spec = backend.symbolic_build_batch(
            iterator, getattr(self, "_distribute_strategy", None)
        )
        if spec is not None and data_batch is None:
            iterator, data_batch = None, spec
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    def _symbolic_build(self, iterator=None, data_batch=None):
        super()._symbolic_build(iterator=iterator, data_batch=data_batch)
        # `compute_loss` calls the contrastive loss itself, so Keras's own
        # `CompileLoss` is never called and never built, and Keras would
        # trace the model and the loss symbolically again at every `fit`,
        # `evaluate`, `train_on_batch` and `test_on_batch` call (tens of
        # milliseconds each for the smallest model). Once this first build
        # has traced them, it counts as built.
        if self._compile_loss is not None:
            self._compile_loss.built = True

    def fit(self, x=None, y=None, *args, **kwargs):
        a = checked_arguments(super().fit, x, y, args, kwargs)
        a = backend.fresh_order_arguments(a)
        backend.check_distribution()
        a["callbacks"] = variogram_first(a.get("callbacks"), self.loss)
        with backend.lost_process_errors(), backend.state_kept_on_error(self):
            return super().fit(**a)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        a = checked_arguments(super().evaluate, x, y, args, kwargs)
        with backend.state_kept_on_error(self):
            return super().evaluate(**a)

    def encode_image(self, x, batch_size=None, verbose=0):
        """Normalised image embeddings `(N, D)` as numpy.

        Arrays, lists and tensors go through one cached compiled function
        (`geovario_keras.inference.embed`); anything else (`tf.data`,
        `PyDataset`, generators) through `predict`, with the same result.

        Args:
            x: images or features accepted by the image encoder; with an
                image backbone that preprocesses (`gv.layers.
                CLIPImageFeatures`), also a list of images of any sizes
                (arrays, PIL images or file paths).
            batch_size: int or None (32). Inputs per step.
            verbose: Keras progress-bar verbosity.
        """
        backbone = getattr(self.image_encoder, "backbone", None)
        preprocess = getattr(backbone, "preprocess", None)
        if preprocess is not None and isinstance(x, (list, tuple)):
            # Photos are decoded and resized a chunk at a time: memory
            # stays bounded for long lists of files.
            step = max(256, batch_size or 32)
            parts = [
                self.encode_image(
                    preprocess(x[i : i + step]), batch_size, verbose
                )
                for i in range(0, len(x), step)
            ]
            if not parts:
                raise ValueError("`x` is an empty list of images.")
            return np.concatenate(parts)
        x = checked_features(x, "x")  # numeric lists become arrays
        arrays = isinstance(x, np.ndarray) or backend.is_tensor(x)
        # An unbuilt image encoder is built by `predict` on first use.
        if not (arrays and self.image_encoder.built):
            return self.predict(x, batch_size=batch_size, verbose=verbose)
        batch_size = 32 if batch_size is None else batch_size
        return self._embed(self.image_encoder, x, batch_size, verbose)

    def encode_location(self, gps, batch_size=4096, verbose=0):
        """Normalised location embeddings `(N, D)` of `gps` as numpy.

        Args:
            gps: `(N, 2)` latitude, longitude in degrees.
            batch_size: int. Points encoded per step.
            verbose: Keras progress-bar verbosity.
        """
        gps = np.asarray(geo.check_gps(gps, name="gps"), "float32")
        if not self.location_encoder.built:
            self.location_encoder.build((None, 2))
        return self._embed(self.location_encoder, gps, batch_size, verbose)

    def _embed(self, layer, x, batch_size, verbose):
        # An array is read in place, a batch at a time.
        x, dim, jit = backend.host_array(x), self.embed_dim, self.jit_compile
        return inference.embed(layer, x, dim, batch_size, verbose, jit)

    def save_to_preset(self, preset_dir, overwrite=False):
        """Writes the model as a preset folder (keras-hub's local layout).

        `config.json` + `model.weights.h5` (gallery and reference set
        included) + `metadata.json`; written to a temporary folder and
        renamed into place, and an existing preset is replaced only with
        `overwrite=True`. Reload with `GeoCLIP.from_preset(preset_dir)`,
        on any backend. See `gv.presets`.

        Returns:
            The preset folder's absolute path.
        """
        return presets.save_to_preset(self, preset_dir, overwrite=overwrite)

    @classmethod
    def from_preset(cls, preset_dir, load_weights=True):
        """Loads a preset folder written by `save_to_preset` (or by
        `gv.pretrained.write_geoclip_preset`): built, not compiled.

        Example:

        >>> import tempfile
        >>> model = gv.GeoCLIP(
        ...     gv.layers.ImageEncoder(None, embed_dim=8, hidden_units=16),
        ...     gv.layers.MLPLocationEncoder(hidden_units=16, embed_dim=8))
        >>> _ = model(np.zeros((1, 5), "float32"))
        >>> path = model.save_to_preset(tempfile.mkdtemp() + "/mine")
        >>> same = gv.GeoCLIP.from_preset(path)
        >>> gps = np.array([[48.86, 2.35]], "float32")
        >>> np.array_equal(same.encode_location(gps),
        ...                model.encode_location(gps))
        True
        """
        model = presets.from_preset(preset_dir, load_weights=load_weights)
        if not isinstance(model, cls):
            raise ValueError(
                f"The preset at {preset_dir!r} holds a "
                f"{type(model).__name__}, not a {cls.__name__}."
            )
        return model

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "image_encoder": serialize(self.image_encoder),
                "location_encoder": serialize(self.location_encoder),
                "queue_size": self.queue_size,
                "gps_noise_m": list(self.gps_noise_m),
                "logit_scale_init": self.head.logit_scale_init,
                "seed": self.seed,
                "gallery_size": self.gallery.size,
                "reference_size": self.reference.size,
                "reference_dtype": self.reference.embeddings_dtype,
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
