"""Training noise on coordinates, measured in metres on the sphere."""

import keras
from keras import ops

from geovario_keras import geo
from geovario_keras.api_export import register

_STATE_KEY = "seed_generator_state"


@register
class GeodesicNoise(keras.layers.Layer):
    """Moves coordinates by Gaussian noise of `sigma_m` metres, in training.

    GeoCLIP perturbs the GPS of training candidates (150 m on batch points,
    1 km on queue points in the paper); `gv.geo.geodesic_noise` does it along
    great circles, so the noise has the same ground size at every latitude.
    Outside training the coordinates pass unchanged.

    The random state is saved with the model (`.keras` and `.weights.h5`),
    which Keras does not do for a `SeedGenerator` by itself: a run resumed
    from a checkpoint draws the same noise as the uninterrupted run. On
    PyTorch the draws come from a counter-based generator in tensor
    operations (`gv.backend.gaussian_steps`), so that `torch.compile`
    compiles the training step whole.

    Args:
        seed: int or None. Seed of the noise.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        gps: `(N, 2)` latitude, longitude in degrees, or a list of such
            blocks (then `sigma_m` is a list, one per block, and the
            perturbed blocks are returned concatenated; see
            `gv.geo.geodesic_noise_blocks`).
        sigma_m: float >= 0. Standard deviation per axis in metres.
        training: bool. Noise is added only in training.

    Example:

    >>> noise = GeodesicNoise(seed=0)
    >>> gps = np.array([[48.86, 2.35]], "float32")
    >>> moved = noise(gps, sigma_m=1000.0, training=True)
    >>> km = gv.geo.haversine_km(gps, moved)
    >>> 0.0 < float(keras.ops.convert_to_numpy(km)[0]) < 10.0
    True
    >>> keras.ops.convert_to_numpy(noise(gps, sigma_m=1000.0)).tolist()
    [[48.86000061035156, 2.3499999046325684]]
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(
            seed, name="seed_generator"
        )
        self.built = True

    @property
    def input_dtype(self):
        # Coordinates stay float32 under any dtype policy.
        return "float32"

    def call(self, gps, sigma_m=0.0, training=None):
        if isinstance(gps, (list, tuple)):
            if not training:
                return ops.concatenate(gps, 0)
            return geo.geodesic_noise_blocks(
                gps, list(sigma_m), self.seed_generator
            )
        if not training:
            return gps
        return geo.geodesic_noise(gps, sigma_m, self.seed_generator)

    def compute_output_shape(self, gps_shape):
        if isinstance(gps_shape, list):
            sizes = [shape[0] for shape in gps_shape]
            total = None if None in sizes else sum(sizes)
            return (total, 2)
        return gps_shape

    def save_own_variables(self, store):
        super().save_own_variables(store)
        state = self.seed_generator.state
        store[_STATE_KEY] = ops.convert_to_numpy(state)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _STATE_KEY in keys:  # absent from files written before it was
            self.seed_generator.state.assign(store[_STATE_KEY])
        own = {k: store[k] for k in keys if k != _STATE_KEY}
        super().load_own_variables(own)

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config
