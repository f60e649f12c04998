"""GeoCLIP's multi-scale GPS location encoder."""

import keras

from geovario_keras import backend
from geovario_keras.api_export import register
from geovario_keras.layers.equal_earth import EqualEarthProjection
from geovario_keras.layers.fourier import RandomFourierFeatures
from geovario_keras.layers.initializers import dense_initializers
from geovario_keras.utils import check_int
from geovario_keras.utils import gps_input_shape


@register
class LocationEncoder(keras.layers.Layer):
    """Encodes (latitude, longitude) into an embedding, as GeoCLIP does.

    Architecture (Vivanco Cepeda et al. 2023):
    Equal Earth projection, then for every scale `sigma` a branch made of
    random Fourier features (`num_features` frequencies, frozen `B ~
    N(0, sigma^2)`), `hidden_layers` ReLU Dense layers of `hidden_units`, and a
    linear head to `embed_dim`. The branch outputs are **summed** (no
    normalisation; `GeoCLIP` L2-normalises). With the defaults this is
    GeoCLIP's encoder: 9,449,472 parameters, 1,536 of them the frozen `B`.

    Args:
        sigmas: sequence of floats. One branch per Fourier scale.
        num_features: int. Fourier frequencies per branch (input width of
            the first Dense layer is `2 * num_features`).
        hidden_units: int. Width of the hidden Dense layers.
        hidden_layers: int >= 1. Number of hidden ReLU Dense layers.
        embed_dim: int. Output embedding size.
        seed: int or None. Seeds the Fourier matrices (branch `i` uses
            `seed + i`) so that two encoders built with the same seed share
            them.
        kernel_initializer: initializer of the Dense kernels.
        bias_initializer: initializer of the Dense biases.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
            Under a mixed-precision policy the projection and the Fourier
            phases still run in float32.

    Call arguments:
        inputs: tensor `(N, 2)` of (latitude, longitude) in degrees.

    Returns:
        Tensor `(N, embed_dim)`, not normalised.

    Example:

    >>> enc = LocationEncoder(hidden_units=64, hidden_layers=2, embed_dim=32)
    >>> gps = np.array([[48.86, 2.35], [-33.87, 151.21]], "float32")
    >>> tuple(enc(gps).shape)
    (2, 32)
    """

    def __init__(
        self,
        sigmas=(1.0, 16.0, 256.0),
        num_features=256,
        hidden_units=1024,
        hidden_layers=3,
        embed_dim=512,
        seed=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        sigmas = tuple(float(s) for s in sigmas)
        if not sigmas or any(s <= 0 for s in sigmas):
            raise ValueError(
                f"`sigmas` must be a non-empty sequence of numbers > 0; got "
                f"{sigmas!r}."
            )
        check_int("num_features", num_features)
        check_int("hidden_units", hidden_units)
        check_int("hidden_layers", hidden_layers)
        check_int("embed_dim", embed_dim)
        self.sigmas = sigmas
        self.num_features = num_features
        self.hidden_units = hidden_units
        self.hidden_layers = hidden_layers
        self.embed_dim = embed_dim
        self.seed = seed
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # A fresh initializer per Dense layer (see `InitializerCopies`).
        init = dense_initializers(
            self.kernel_initializer, self.bias_initializer
        )
        # The projected plane feeds phases of up to ~2 pi * 4 sigma radians:
        # it must reach the Fourier layers in float32 (a bfloat16 x carries
        # an error of ~4e-3, i.e. several radians at sigma = 256).
        self.projection = EqualEarthProjection(
            dtype="float32", name="equal_earth"
        )
        self.fourier, self.hidden, self.heads = [], [], []
        for i, sigma in enumerate(sigmas):
            rff, hidden, head = self._branch(i, sigma, init)
            self.fourier.append(rff)
            self.hidden.append(hidden)
            self.heads.append(head)

    def _branch(self, i, sigma, init):
        """Branch `i`: its Fourier features, ReLU layers and linear head."""
        rff = RandomFourierFeatures(
            sigma,
            num_features=self.num_features,
            seed=None if self.seed is None else self.seed + i,
            dtype=self.dtype_policy,
            name=f"rff_{i}",
        )
        hidden = [
            keras.layers.Dense(
                self.hidden_units,
                activation="relu",
                dtype=self.dtype_policy,
                name=f"branch_{i}_dense_{j}",
                **init(),
            )
            for j in range(self.hidden_layers)
        ]
        head = keras.layers.Dense(
            self.embed_dim,
            dtype=self.dtype_policy,
            name=f"branch_{i}_head",
            **init(),
        )
        return rff, hidden, head

    @property
    def input_dtype(self):
        return "float32"

    def build(self, input_shape):
        input_shape = gps_input_shape(self, input_shape)
        self.projection.build(input_shape)
        for rff, hidden, head in zip(self.fourier, self.hidden, self.heads):
            rff.build(input_shape)
            shape = rff.compute_output_shape(input_shape)
            for dense in hidden:
                dense.build(shape)
                shape = dense.compute_output_shape(shape)
            head.build(shape)

    def call(self, inputs):
        p = self.projection(inputs)
        out = None
        for rff, hidden, head in zip(self.fourier, self.hidden, self.heads):
            x = rff(p)
            for dense in hidden:
                x = backend.dense_relu(dense, x)
            x = head(x)
            out = x if out is None else out + x
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sigmas": list(self.sigmas),
                "num_features": self.num_features,
                "hidden_units": self.hidden_units,
                "hidden_layers": self.hidden_layers,
                "embed_dim": self.embed_dim,
                "seed": self.seed,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
