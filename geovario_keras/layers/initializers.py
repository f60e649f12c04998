"""One initializer argument, an independent initializer per weight.

A Keras random initializer built with `seed=None` draws its seed once, when
it is constructed, and reuses it on every call; one built with an int seed
does the same with that seed. Handing one instance to several `Dense`
layers therefore gives every kernel of the same shape the same values: the
three Fourier branches of GeoCLIP's location encoder would start as one
MLP. PyTorch's `nn.Linear`, GeoCLIP's reference, initialises every layer
independently; `InitializerCopies` does the same for the encoders here.
"""

import keras


class InitializerCopies:
    """Makes a fresh copy of one initializer for each weight it is used for.

    - An initializer with `seed=None` (the default of `"glorot_uniform"`
      and friends): each copy draws its own seed from Python's `random`,
      so `keras.utils.set_random_seed` still reproduces the weights.
    - An int `seed`: copy `k` gets `seed + k`, so the weights differ from
      each other and are reproduced by the same seed.
    - A `keras.random.SeedGenerator` seed: the instance itself (it advances
      on every call), as are callables that are not Keras initializers.

    Args:
        initializer: an initializer identifier (`"glorot_uniform"`, a config
            dict, a `keras.initializers.Initializer`).

    Example:

    >>> copies = InitializerCopies("glorot_uniform")
    >>> a, b = copies(), copies()
    >>> first = keras.ops.convert_to_numpy(a((4, 4)))
    >>> bool(np.any(first != keras.ops.convert_to_numpy(b((4, 4)))))
    True
    """

    def __init__(self, initializer):
        self.initializer = keras.initializers.get(initializer)
        self.count = 0

    def __call__(self):
        init = self.initializer
        index, self.count = self.count, self.count + 1
        if not isinstance(init, keras.initializers.Initializer):
            return init
        seed = getattr(init, "seed", None)
        if seed is not None and not isinstance(seed, int):
            return init  # a SeedGenerator: its draws already differ
        config = init.get_config()
        if isinstance(config.get("seed"), int):
            config["seed"] += index
        # `seed=None` in the config: the new instance draws its own seed.
        return init.__class__.from_config(config)


def dense_initializers(kernel_initializer, bias_initializer):
    """A function that returns `Dense` initializer arguments, fresh each call.

    Example:

    >>> init = dense_initializers("glorot_uniform", "zeros")
    >>> a = keras.layers.Dense(4, **init())
    >>> b = keras.layers.Dense(4, **init())
    >>> a.build((None, 4)); b.build((None, 4))
    >>> bool(np.any(a.kernel.numpy() != b.kernel.numpy()))
    True
    """
    kernels = InitializerCopies(kernel_initializer)
    biases = InitializerCopies(bias_initializer)

    def init():
        return {"kernel_initializer": kernels(), "bias_initializer": biases()}

    return init
