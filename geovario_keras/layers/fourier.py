"""Random Fourier features (Tancik et al. 2020) with a frozen matrix B."""

import math

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.utils import check_positive


@register
class RandomFourierFeatures(keras.layers.Layer):
    """Gaussian random Fourier features `[cos(2 pi v B^T), sin(2 pi v B^T)]`.

    `B` has shape `(num_features, input_dim)`, is drawn once from
    `N(0, sigma^2)` by a seeded initializer, is **not trainable**, and is saved
    with the model. Its layout matches the `rff` package used by GeoCLIP
    (`GaussianEncoding.b`), so released weights load unchanged. The output
    holds all cosines first, then all sines.

    The phase `2 pi v B^T` can reach thousands of radians for large `sigma`,
    so the layer computes in float32 whatever its dtype policy and casts
    only the output to the compute dtype.

    Args:
        sigma: float > 0. Standard deviation of the entries of `B`.
        num_features: int. Number of frequencies; the output has
            `2 * num_features` values.
        seed: int or None. Seed of the initializer of `B`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor `(..., input_dim)`.

    Returns:
        Tensor `(..., 2 * num_features)`.

    Example:

    >>> rff = RandomFourierFeatures(sigma=16.0, num_features=256, seed=0)
    >>> tuple(rff(np.zeros((4, 2), "float32")).shape)
    (4, 512)
    """

    def __init__(self, sigma, num_features=256, seed=None, **kwargs):
        super().__init__(**kwargs)
        sigma = check_positive("sigma", sigma)
        if not (isinstance(num_features, int) and num_features > 0):
            raise ValueError(
                f"`num_features` must be an int > 0; got {num_features!r}."
            )
        self.sigma = float(sigma)
        self.num_features = num_features
        self.seed = seed

    @property
    def input_dtype(self):
        return "float32"

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "RandomFourierFeatures needs a known last input dimension; "
                f"got input shape {input_shape}."
            )
        self.b = self.add_weight(
            name="b",
            shape=(self.num_features, input_dim),
            initializer=keras.initializers.RandomNormal(
                stddev=self.sigma, seed=self.seed
            ),
            dtype="float32",
            trainable=False,
            autocast=False,
        )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        b = ops.cast(self.b, "float32")
        v = (2.0 * math.pi) * ops.matmul(x, ops.transpose(b))
        out = ops.concatenate([ops.cos(v), ops.sin(v)], axis=-1)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2 * self.num_features,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sigma": self.sigma,
                "num_features": self.num_features,
                "seed": self.seed,
            }
        )
        return config
