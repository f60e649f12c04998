"""First-in-first-out queue of GPS coordinates (and aligned features)."""

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.utils import add_state
from geovario_keras.utils import check_int


@register
class GPSQueue(keras.layers.Layer):
    """Ring buffer of raw coordinates used as extra negatives (MoCo style).

    GeoCLIP keeps the last `size` training coordinates (not their
    embeddings: they are re-encoded by the current location encoder every
    step). Unlike the reference implementation, which starts the queue full
    of random points near (0, 0), this queue starts **empty**: `valid_mask()`
    is False for slots never written, and the model masks them out of the
    softmax. Optionally an aligned queue of `feature_dim` features is kept
    (the semivariogram loss needs a visual feature for every candidate).

    All state is non-trainable `keras.Variable`s updated with `.assign()`, so
    it is saved with the model and works inside compiled `fit` on every
    backend.

    Args:
        size: int >= 1. Capacity of the queue.
        feature_dim: int or None. Size of the aligned feature queue; None
            keeps no features.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> q = GPSQueue(4)
    >>> q.enqueue(np.array([[1.0, 2.0], [3.0, 4.0]], "float32"))
    >>> keras.ops.convert_to_numpy(q.valid_mask()).tolist()
    [True, True, False, False]
    """

    def __init__(self, size, feature_dim=None, **kwargs):
        super().__init__(**kwargs)
        check_int("size", size, 1)
        if feature_dim is not None and (
            not isinstance(feature_dim, int) or feature_dim < 1
        ):
            raise ValueError(
                f"`feature_dim` must be None or an int >= 1; got "
                f"{feature_dim!r}."
            )
        self.size = size
        self.feature_dim = feature_dim
        self.coords = add_state(self, "coords", (size, 2), "float32")
        self.features = None
        if feature_dim is not None:
            self.features = add_state(
                self, "features", (size, feature_dim), "float32"
            )
        self.pointer = add_state(self, "pointer", (), "int32")
        self.count = add_state(self, "count", (), "int32")
        self.built = True

    def valid_mask(self):
        """Boolean `(size,)`: True for slots that hold a real coordinate."""
        return ops.arange(self.size, dtype="int32") < self.count

    def is_full(self):
        """Boolean scalar: True once every slot has been written."""
        return self.count >= self.size

    def enqueue(self, coords, features=None):
        """Writes a batch at the pointer, overwriting the oldest entries.

        Args:
            coords: tensor `(B, 2)`. If `B > size`, only the last `size`
                rows are kept.
            features: tensor `(B, feature_dim)`; required iff the queue keeps
                features.
        """
        if (features is None) != (self.features is None):
            raise ValueError(
                "`features` must be given exactly when the queue was built "
                f"with `feature_dim` (feature_dim={self.feature_dim})."
            )
        coords = ops.cast(coords, "float32")[-self.size :]
        n = ops.shape(coords)[0]
        index = ops.mod(self.pointer + ops.arange(n, dtype="int32"), self.size)
        index = ops.expand_dims(index, -1)
        self.coords.assign(ops.scatter_update(self.coords, index, coords))
        if features is not None:
            features = ops.cast(features, "float32")[-self.size :]
            self.features.assign(
                ops.scatter_update(self.features, index, features)
            )
        n = ops.cast(n, "int32")
        self.pointer.assign(ops.mod(self.pointer + n, self.size))
        self.count.assign(ops.minimum(self.count + n, self.size))

    def reset(self):
        """Empties the queue."""
        self.pointer.assign(0)
        self.count.assign(0)

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size, "feature_dim": self.feature_dim})
        return config
