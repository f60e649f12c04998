"""Cached gallery of GPS coordinates and their location embeddings."""

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.utils import add_state


@register
class GPSGallery(keras.layers.Layer):
    """Holds a retrieval gallery: coordinates and normalised embeddings.

    Prediction in GeoCLIP is retrieval: every query image is scored against
    the location embeddings of a fixed gallery of coordinates (100K points in
    the paper). The reference implementation re-encodes the whole gallery on
    every call; this layer caches the encoded gallery as non-trainable state
    that is saved with the model (and baked into exported SavedModels).

    `GeoCLIP.set_gallery` fills it; use that rather than this layer directly.

    Args:
        size: int >= 0. Number of gallery points (0: empty).
        embed_dim: int. Embedding size.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, size=0, embed_dim=512, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"`size` must be an int >= 0; got {size!r}.")
        self.size = size
        self.embed_dim = embed_dim
        self._make_variables(size)
        self.built = True

    def _make_variables(self, size):
        self.coords = add_state(self, "coords", (size, 2), "float32")
        self.embeddings = add_state(
            self, "embeddings", (size, self.embed_dim), "float32"
        )

    def set(self, coords, embeddings):
        """Stores `coords (M, 2)` and `embeddings (M, embed_dim)`."""
        size = int(coords.shape[0])
        if tuple(embeddings.shape) != (size, self.embed_dim):
            raise ValueError(
                f"`embeddings` must have shape ({size}, {self.embed_dim}); "
                f"got {tuple(embeddings.shape)}."
            )
        if size != self.size:
            # The shape changes: replace the variables (untracked on delete).
            del self.coords
            del self.embeddings
            self.size = size
            self._make_variables(size)
        self.coords.assign(ops.cast(coords, "float32"))
        self.embeddings.assign(ops.cast(embeddings, "float32"))

    def call(self, inputs=None):
        return self.coords, self.embeddings

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size, "embed_dim": self.embed_dim})
        return config
