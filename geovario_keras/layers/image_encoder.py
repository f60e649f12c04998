"""Image encoder: any Keras backbone (or precomputed features) + GeoCLIP MLP."""

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.layers.initializers import dense_initializers
from geovario_keras.utils import check_int

_POOLINGS = ("avg", "max", "cls")


@register
class ImageEncoder(keras.layers.Layer):
    """Maps images (or precomputed image features) to an embedding.

    GeoCLIP puts a two-layer MLP (`hidden_units` ReLU, then a linear layer to
    `embed_dim`; 768 -> 768 -> 512 for CLIP ViT-L/14) on top of a frozen image
    backbone. Here the backbone is any Keras model:

    - `backbone=None`: inputs are precomputed feature vectors `(N, D)`
      (e.g. CLIP image features saved to disk). This is the fast path for
      research on frozen features.
    - a `keras.applications` model, a keras-hub backbone (such as a CLIP
      vision encoder) or a keras-cv backbone. If it returns feature maps
      `(N, H, W, C)` they are pooled over space; token sequences
      `(N, T, C)` are pooled over tokens (`pooling="cls"` takes token 0);
      a dict output uses its `"pooled_output"` entry when present, else
      `"sequence_output"`.

    Args:
        backbone: a `keras.Model`/`keras.layers.Layer` or None.
        embed_dim: int. Output embedding size.
        hidden_units: int. Width of the hidden ReLU layer of the MLP.
        trainable_backbone: bool. Whether the backbone is fine-tuned.
        pooling: one of `"avg"`, `"max"`, `"cls"`. How to pool a backbone
            output of rank 3 or 4.
        kernel_initializer: initializer of the MLP's Dense kernels.
        bias_initializer: initializer of the MLP's Dense biases.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: images accepted by the backbone, or features `(N, D)`.

    Returns:
        Tensor `(N, embed_dim)`, not normalised.

    Example:

    >>> enc = ImageEncoder(backbone=None, embed_dim=32, hidden_units=64)
    >>> tuple(enc(np.zeros((4, 768), "float32")).shape)
    (4, 32)
    """

    def __init__(
        self,
        backbone=None,
        embed_dim=512,
        hidden_units=768,
        trainable_backbone=False,
        pooling="avg",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_int("embed_dim", embed_dim)
        check_int("hidden_units", hidden_units)
        if pooling not in _POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {_POOLINGS}; got {pooling!r}."
            )
        if backbone is not None and not isinstance(backbone, keras.Layer):
            raise ValueError(
                "`backbone` must be a Keras model or layer (or None for "
                f"precomputed features); got {type(backbone).__name__}."
            )
        self.backbone = backbone
        self.embed_dim = embed_dim
        self.hidden_units = hidden_units
        self.trainable_backbone = trainable_backbone
        self.pooling = pooling
        if backbone is not None:
            backbone.trainable = trainable_backbone
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # A fresh initializer per Dense layer (see `InitializerCopies`).
        init = dense_initializers(
            self.kernel_initializer, self.bias_initializer
        )
        self.hidden = keras.layers.Dense(
            hidden_units,
            activation="relu",
            dtype=self.dtype_policy,
            name="mlp_hidden",
            **init(),
        )
        self.head = keras.layers.Dense(
            embed_dim, dtype=self.dtype_policy, name="mlp_head", **init()
        )

    def _select(self, features):
        if isinstance(features, dict):
            for key in ("pooled_output", "sequence_output"):
                if key in features:
                    return features[key]
            raise ValueError(
                "The backbone returned a dict without 'pooled_output' or "
                f"'sequence_output'; keys: {sorted(features)}."
            )
        if isinstance(features, (list, tuple)):
            return features[-1]
        return features

    def _pool(self, x):
        rank = len(x.shape)
        if rank == 2:
            return x
        if rank not in (3, 4):
            raise ValueError(
                "The backbone output must have rank 2, 3 or 4; got shape "
                f"{tuple(x.shape)}."
            )
        if self.pooling == "cls":
            return x[:, 0] if rank == 3 else x[:, 0, 0]
        axes = tuple(range(1, rank - 1))
        if self.pooling == "max":
            return ops.max(x, axis=axes)
        return ops.mean(x, axis=axes)

    def _feature_shape(self, input_shape):
        if self.backbone is None:
            if len(input_shape) != 2:
                raise ValueError(
                    "With `backbone=None` the inputs are precomputed feature "
                    f"vectors of shape (N, D); got shape {tuple(input_shape)}."
                )
            return tuple(input_shape)
        out = self.backbone.compute_output_spec(
            keras.KerasTensor(tuple(input_shape), dtype=self.compute_dtype)
        )
        out = self._select(out)
        return (input_shape[0], out.shape[-1])

    def build(self, input_shape):
        if self.backbone is not None and not self.backbone.built:
            self.backbone.build(input_shape)
        shape = self._feature_shape(input_shape)
        self.hidden.build(shape)
        self.head.build(shape[:-1] + (self.hidden_units,))

    def call(self, inputs, training=None):
        if self.backbone is None:
            x = inputs
        else:
            x = self._select(
                self.backbone(
                    inputs, training=training and self.trainable_backbone
                )
            )
            x = self._pool(x)
        return self.head(self.hidden(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": None
                if self.backbone is None
                else keras.saving.serialize_keras_object(self.backbone),
                "embed_dim": self.embed_dim,
                "hidden_units": self.hidden_units,
                "trainable_backbone": self.trainable_backbone,
                "pooling": self.pooling,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("backbone") is not None:
            config["backbone"] = keras.saving.deserialize_keras_object(
                config["backbone"]
            )
        return cls(**config)
