"""A SIREN layer: a dense layer with a sine activation (Sitzmann et al. 2020).

Sitzmann, Martel, Bergman, Lindell & Wetzstein, "Implicit Neural
Representations with Periodic Activation Functions", NeurIPS 2020.
"""

import math

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.utils import check_int
from geovario_keras.utils import check_positive


@register
class SirenDense(keras.layers.Layer):
    """A Dense layer of a SIREN: `sin(w0 * (x W + b))` (Sitzmann et al. 2020).

    SIREN's initialisation keeps the pre-activations of every layer spread
    over a few periods of the sine whatever the depth: `W` and `b` are
    uniform in `+-1 / fan_in` for the first layer of a network
    (`is_first=True`) and in `+-sqrt(6 / fan_in) / w0` otherwise.

    Sitzmann, Martel, Bergman, Lindell & Wetzstein, "Implicit Neural
    Representations with Periodic Activation Functions", NeurIPS 2020.

    Args:
        units: int. Output width.
        w0: float > 0. Frequency factor of the sine (SIREN: 30 for the first
            layer, 1 after it in the spherical-harmonic encoder).
        is_first: bool. Use the first layer's initialisation.
        sine: bool. Apply the sine; `False` gives the network's linear last
            layer, with the same initialisation.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> layer = SirenDense(8, w0=30.0, is_first=True)
    >>> y = layer(np.ones((2, 4), "float32"))
    >>> tuple(y.shape), bool(np.abs(keras.ops.convert_to_numpy(y)).max() <= 1)
    ((2, 8), True)
    """

    def __init__(self, units, w0=1.0, is_first=False, sine=True, **kwargs):
        super().__init__(**kwargs)
        check_int("units", units)
        self.units = units
        self.w0 = check_positive("w0", w0)
        self.is_first = bool(is_first)
        self.sine = bool(sine)

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(
                "SirenDense needs a known last input dimension; got input "
                f"shape {input_shape}."
            )
        if self.is_first:
            bound = 1.0 / fan_in
        else:
            bound = math.sqrt(6.0 / fan_in) / self.w0
        # One initializer each: an unseeded Keras initializer reuses the
        # seed it drew when built, so a shared one would correlate them.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )

    def call(self, inputs):
        y = ops.matmul(inputs, self.kernel) + self.bias
        return ops.sin(self.w0 * y) if self.sine else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "w0": self.w0,
                "is_first": self.is_first,
                "sine": self.sine,
            }
        )
        return config
