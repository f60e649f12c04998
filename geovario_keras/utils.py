"""Small shared helpers: argument checks and non-trainable state."""


def check_int(name, value, low=1):
    """Raises a `ValueError` naming `name` unless `value` is an int >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an int >= {low}; got {value!r}.")
    return value


def add_state(layer, name, shape, dtype="float32"):
    """A zero-initialised, non-trainable, never auto-cast state variable.

    Used for queues, galleries and semivariogram statistics: saved with the
    model, updated with `.assign()`, and kept in float32 under
    mixed-precision policies.
    """
    return layer.add_weight(
        name=name,
        shape=shape,
        initializer="zeros",
        dtype=dtype,
        trainable=False,
        autocast=False,
    )
