"""Equal Earth map projection, as used by GeoCLIP's location encoder."""

import math

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.utils import gps_input_shape

# Equal Earth polynomial coefficients (Savric, Patterson & Jenny 2018), and
# GeoCLIP's scale factor that maps the projected plane to x in [-1, 1]
# (the `SF = 66.50336` of GeoCLIP's released code).
A1 = 1.340264
A2 = -0.081106
A3 = 0.000893
A4 = 0.003796
SF = 66.50336


@register
class EqualEarthProjection(keras.layers.Layer):
    """Projects (latitude, longitude) degrees with the Equal Earth projection.

    Implements the spherical Equal Earth projection on the unit sphere, then
    scales by `SF / 180` exactly as GeoCLIP does, so that `x` lies in
    `[-1, 1]` and `y` in about `[-0.4867, 0.4867]`.

    The computation always runs in float32, whatever the layer's dtype
    policy: inputs are not auto-cast (a bfloat16 longitude would carry an
    error of tens of km), and the output is cast to the compute dtype.

    Args:
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(..., 2)`: latitude, longitude in degrees.

    Returns:
        Tensor `(..., 2)`: projected `(x, y)`.

    Example:

    >>> layer = EqualEarthProjection()
    >>> xy = layer(np.array([[0.0, 180.0], [90.0, 0.0]], "float32"))
    >>> keras.ops.convert_to_numpy(xy).astype("float64").round(4).tolist()
    [[1.0, 0.0], [0.0, 0.4867]]
    """

    @property
    def input_dtype(self):
        # Coordinates are never down-cast to a mixed-precision compute dtype.
        return "float32"

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        deg = math.pi / 180.0
        lat = x[..., 0] * deg
        lon = x[..., 1] * deg
        # theta = asin(s), written as atan2(s, cos theta) with cos theta =
        # sqrt(1 - s^2) >= 1/2: as accurate, and (unlike `asin`, which JAX
        # serialises as a `composite` op) exportable from JAX to TensorFlow.
        s = math.sqrt(3.0) / 2.0 * ops.sin(lat)
        cos_theta = ops.sqrt(1.0 - s * s)
        theta = ops.arctan2(s, cos_theta)
        t2 = theta * theta
        t6 = t2 * t2 * t2
        t8 = t6 * t2
        denominator = 3.0 * (9.0 * A4 * t8 + 7.0 * A3 * t6 + 3.0 * A2 * t2 + A1)
        px = 2.0 * math.sqrt(3.0) * lon * cos_theta / denominator
        py = theta * (A1 + t2 * (A2 + t2 * t2 * (A3 + A4 * t2)))
        out = ops.stack([px, py], axis=-1) * (SF / 180.0)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        gps_input_shape(self, input_shape, "(..., 2)")
        return tuple(input_shape)

    def build(self, input_shape):
        self.compute_output_shape(input_shape)
        self.built = True
