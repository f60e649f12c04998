"""Baseline location encoders: an MLP on raw or sin/cos coordinates."""

import math

import keras
from keras import ops

from geovario_keras import backend
from geovario_keras.api_export import register
from geovario_keras.layers.initializers import dense_initializers
from geovario_keras.utils import check_int
from geovario_keras.utils import gps_input_shape

ENCODINGS = ("raw", "sincos", "cartesian")


def coordinate_features(gps, encoding):
    """The fixed input features of `MLPLocationEncoder`, in float32.

    - `"raw"`: `(lat / 90, lon / 180)`. Seam at the antimeridian (-180 and
      180 are the two ends of the range), and every longitude at a pole is
      a different point.
    - `"sincos"`: `(sin lat, cos lat, sin lon, cos lon)` (the "wrap"
      encoding of Mac Aodha et al., ICCV 2019): continuous across the
      antimeridian, still distinct longitudes at a pole.
    - `"cartesian"`: the point on the unit sphere `(cos lat cos lon, cos
      lat sin lon, sin lat)`: continuous everywhere.

    Args:
        gps: tensor `(..., 2)` of (latitude, longitude) in degrees.
        encoding: one of `"raw"`, `"sincos"`, `"cartesian"`.
    """
    gps = ops.cast(gps, "float32")
    lat, lon = gps[..., 0], gps[..., 1]
    if encoding == "raw":
        return ops.stack([lat / 90.0, lon / 180.0], axis=-1)
    lat, lon = lat * (math.pi / 180.0), lon * (math.pi / 180.0)
    if encoding == "sincos":
        parts = [ops.sin(lat), ops.cos(lat), ops.sin(lon), ops.cos(lon)]
    else:
        c = ops.cos(lat)
        parts = [c * ops.cos(lon), c * ops.sin(lon), ops.sin(lat)]
    return ops.stack(parts, axis=-1)


@register
class MLPLocationEncoder(keras.layers.Layer):
    """A ReLU MLP on raw, sin/cos or 3-D coordinates: the baseline encoders.

    Benchmarks of location encoders (e.g. Rußwurm et al., ICLR 2024) report
    such plain encodings next to multi-scale ones because they are
    sometimes as good; use this to check that a richer encoder earns its
    cost on your data. Encoding (`coordinate_features`), then
    `hidden_layers` ReLU Dense layers of `hidden_units`, then a linear head
    to `embed_dim`. A drop-in for `GeoCLIP(location_encoder=...)`.

    Args:
        encoding: `"raw"`, `"sincos"` (default) or `"cartesian"`.
        hidden_units: int. Width of the hidden Dense layers.
        hidden_layers: int >= 1. Number of hidden ReLU Dense layers.
        embed_dim: int. Output embedding size.
        kernel_initializer, bias_initializer: initializers of the Dense
            layers.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
            The coordinate features are computed in float32.

    Call arguments:
        inputs: tensor `(N, 2)` of (latitude, longitude) in degrees.

    Returns:
        Tensor `(N, embed_dim)`, not normalised.

    Example:

    >>> enc = MLPLocationEncoder("sincos", hidden_units=64, embed_dim=32)
    >>> gps = np.array([[48.86, 2.35], [-33.87, 151.21]], "float32")
    >>> tuple(enc(gps).shape)
    (2, 32)
    """

    def __init__(
        self,
        encoding="sincos",
        hidden_units=512,
        hidden_layers=3,
        embed_dim=512,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if encoding not in ENCODINGS:
            raise ValueError(
                f"`encoding` must be one of {ENCODINGS}; got {encoding!r}."
            )
        check_int("hidden_units", hidden_units)
        check_int("hidden_layers", hidden_layers)
        check_int("embed_dim", embed_dim)
        self.encoding = encoding
        self.hidden_units = hidden_units
        self.hidden_layers = hidden_layers
        self.embed_dim = embed_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # A fresh initializer per Dense layer (see `InitializerCopies`).
        init = dense_initializers(
            self.kernel_initializer, self.bias_initializer
        )
        self.hidden = [
            keras.layers.Dense(
                hidden_units,
                activation="relu",
                dtype=self.dtype_policy,
                name=f"dense_{j}",
                **init(),
            )
            for j in range(hidden_layers)
        ]
        self.head = keras.layers.Dense(
            embed_dim, dtype=self.dtype_policy, name="head", **init()
        )

    @property
    def input_dtype(self):
        return "float32"

    def _feature_dim(self):
        return {"raw": 2, "sincos": 4, "cartesian": 3}[self.encoding]

    def build(self, input_shape):
        shape = gps_input_shape(self, input_shape)
        shape = shape[:-1] + (self._feature_dim(),)
        for layer in self.hidden + [self.head]:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, inputs):
        x = coordinate_features(inputs, self.encoding)
        x = ops.cast(x, self.compute_dtype)
        for dense in self.hidden:
            x = backend.dense_relu(dense, x)
        return self.head(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoding": self.encoding,
                "hidden_units": self.hidden_units,
                "hidden_layers": self.hidden_layers,
                "embed_dim": self.embed_dim,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
