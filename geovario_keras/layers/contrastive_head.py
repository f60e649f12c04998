"""The scoring head of GeoCLIP: normalise both sides, scale, dot."""

import math

import keras
from keras import ops

from geovario_keras.api_export import register


def normalise(embeddings):
    """L2-normalised float32 embeddings (GeoCLIP's output convention)."""
    return ops.normalize(ops.cast(embeddings, "float32"), axis=-1)


@register
class ContrastiveHead(keras.layers.Layer):
    """Scores images against locations with a learned temperature.

    As in CLIP and GeoCLIP, both embeddings are L2-normalised and
    `logits = exp(logit_scale) * img @ loc^T`. `logit_scale` is a trainable
    float32 scalar, started at `logit_scale_init` (CLIP: `log(1 / 0.07)`)
    and capped at `max_logit_scale` (CLIP: `log(100)`) when used.

    Args:
        logit_scale_init: float. Initial log temperature.
        max_logit_scale: float. Cap of the log temperature.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        image_embeddings: `(N, D)` image embeddings (normalised here).
        location_embeddings: `(M, D)` location embeddings (normalised
            here).

    Returns:
        Logits `(N, M)`, float32.

    Example:

    >>> head = ContrastiveHead(logit_scale_init=0.0)
    >>> image, locations = np.array([[1.0, 0.0]]), np.array([[2, 0], [0, 3]])
    >>> logits = head(image, locations.astype("float32"))
    >>> keras.ops.convert_to_numpy(logits).round(3).tolist()
    [[1.0, 0.0]]
    """

    def __init__(
        self,
        logit_scale_init=math.log(1.0 / 0.07),
        max_logit_scale=math.log(100.0),
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("logit_scale_init", logit_scale_init),
            ("max_logit_scale", max_logit_scale),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(
                    f"`{name}` must be a finite number; got {value!r}."
                )
        self.logit_scale_init = float(logit_scale_init)
        self.max_logit_scale = float(max_logit_scale)
        self.logit_scale = self.add_weight(
            name="logit_scale",
            shape=(),
            initializer=keras.initializers.Constant(self.logit_scale_init),
            dtype="float32",
            trainable=True,
            autocast=False,
        )
        self.built = True

    @property
    def input_dtype(self):
        # Embeddings are normalised and scored in float32 under any policy.
        return "float32"

    def temperature(self):
        """`exp(logit_scale)`, capped at `exp(max_logit_scale)`."""
        return ops.exp(ops.minimum(self.logit_scale, self.max_logit_scale))

    def call(self, image_embeddings, location_embeddings):
        img = normalise(image_embeddings)
        loc = normalise(location_embeddings)
        return self.temperature() * ops.matmul(img, ops.transpose(loc))

    def compute_output_shape(
        self, image_embeddings_shape, location_embeddings_shape
    ):
        return (image_embeddings_shape[0], location_embeddings_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "logit_scale_init": self.logit_scale_init,
                "max_logit_scale": self.max_logit_scale,
            }
        )
        return config
