"""Variogram models with nugget, partial sill and range.

All models are `gamma(h) = nugget + psill * shape(h / length_scale)`:

- `stable`: `shape(u) = 1 - exp(-u**alpha)`, `alpha` in (0, 2];
- `exponential`: stable with `alpha = 1`;
- `gaussian`: stable with `alpha = 2` (no `sqrt(pi)/2` rescaling, unlike
  gstools' `Gaussian`, whose `len_scale` is ours times `2/sqrt(pi)`);
- `spherical`: `1.5 u - 0.5 u**3` for `u < 1`, else 1 (`length_scale` is the
  range where the sill is reached).

The *effective range* is the distance where `gamma` reaches
`nugget + 0.95 * psill` (95 % of the structured part of the sill):
`length_scale * ln(20)**(1/alpha)` for the stable family.

Every model is evaluated both in numpy (`evaluate`) and in `keras.ops`
(`evaluate_ops`, from a packed parameter vector) so the fitted curve can be
used inside a compiled training step.
"""

import math

import numpy as np
from keras import ops

MODELS = ("stable", "exponential", "gaussian", "spherical")
MODEL_CODES = {name: float(i) for i, name in enumerate(MODELS)}
_FIXED_ALPHA = {"exponential": 1.0, "gaussian": 2.0}
# Root of 1.5 u - 0.5 u^3 = 0.95 on [0, 1].
_SPHERICAL_U95 = 0.8114013518995559

# Layout of the packed parameter vector used in graphs.
PARAM_NAMES = (
    "model_code",
    "nugget",
    "psill",
    "length_scale",
    "alpha",
    "effective_range",
    "active",
)
NUM_PARAMS = len(PARAM_NAMES)


def check_model(model):
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}; got {model!r}.")
    return model


def fixed_alpha(model):
    """The shape exponent fixed by `model`, or None for `stable`."""
    return _FIXED_ALPHA.get(model)


def shape(u, model, alpha=1.0):
    """Normalised variogram shape in numpy (0 at u=0, 1 at infinity)."""
    u = np.maximum(np.asarray(u, dtype="float64"), 0.0)
    if check_model(model) == "spherical":
        return np.where(u < 1.0, 1.5 * u - 0.5 * u**3, 1.0)
    alpha = fixed_alpha(model) or alpha
    return 1.0 - np.exp(-(u**alpha))


def evaluate(h, model, nugget, psill, length_scale, alpha=1.0):
    """`gamma(h)` in numpy for distances `h` (km)."""
    return nugget + psill * shape(np.asarray(h) / length_scale, model, alpha)


def effective_range(model, length_scale, alpha=1.0):
    """Distance where gamma reaches nugget + 95 % of the partial sill."""
    if check_model(model) == "spherical":
        return _SPHERICAL_U95 * length_scale
    alpha = fixed_alpha(model) or alpha
    return length_scale * math.log(20.0) ** (1.0 / alpha)


def evaluate_ops(h, params):
    """`gamma(h)` in `keras.ops` from a packed parameter vector.

    Args:
        h: float tensor of distances in km (any shape).
        params: float tensor `(NUM_PARAMS,)` laid out as `PARAM_NAMES`.
    """
    h = ops.cast(h, "float32")
    nugget, psill, length = params[1], params[2], params[3]
    alpha = params[4]
    u = ops.maximum(h, 0.0) / ops.maximum(length, 1e-6)
    stable = 1.0 - ops.exp(-ops.power(u, alpha))
    spherical = ops.where(u < 1.0, 1.5 * u - 0.5 * u * u * u, 1.0)
    is_spherical = ops.abs(params[0] - MODEL_CODES["spherical"]) < 0.5
    return nugget + psill * ops.where(is_spherical, spherical, stable)
