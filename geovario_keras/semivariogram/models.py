"""Variogram models (families) with nugget, partial sill and range.

"Model" is the geostatistical word for the family of curves fitted to an
empirical semivariogram; in code the family is named `family` so that it
is never confused with a Keras model. All families are
`gamma(h) = nugget + psill * shape(h / length_scale)`:

- `stable`: `shape(u) = 1 - exp(-u**alpha)`, `alpha` in (0, 2];
- `exponential`: stable with `alpha = 1`;
- `gaussian`: stable with `alpha = 2` (no `sqrt(pi)/2` rescaling, unlike
  gstools' `Gaussian`, whose `len_scale` is ours times `2/sqrt(pi)`);
- `spherical`: `1.5 u - 0.5 u**3` for `u < 1`, else 1 (`length_scale` is the
  range where the sill is reached).

The *effective range* is the distance where `gamma` reaches
`nugget + 0.95 * psill` (95 % of the structured part of the sill):
`length_scale * ln(20)**(1/alpha)` for the stable family.

Every family is evaluated both in numpy (`evaluate`) and in `keras.ops`
(`evaluate_ops`, from packed parameters) so the fitted curve can be used
inside a compiled training step.
"""

import math
from typing import NamedTuple

import numpy as np
from keras import ops

from geovario_keras import backend

FAMILIES = ("stable", "exponential", "gaussian", "spherical")
FAMILY_CODES = {name: float(i) for i, name in enumerate(FAMILIES)}
_FIXED_ALPHA = {"exponential": 1.0, "gaussian": 2.0}
# Root of 1.5 u - 0.5 u^3 = 0.95 on [0, 1].
_SPHERICAL_U95 = 0.8114013518995559


class PackedParams(NamedTuple):
    """Named view of the packed parameter vector used inside graphs.

    A fit is stored in the model as one float32 vector of `NUM_PARAMS`
    values laid out as `PARAM_NAMES` (`VariogramFit.packed()` writes it);
    `PackedParams.unpack(vector)` names its entries. `active` is 1 for a
    trusted fit and 0 for none (the losses then re-weight nothing).

    Example:

    >>> p = PackedParams.unpack(np.array([0, 0.1, 0.9, 500, 1, 1498, 1.0]))
    >>> float(p.sill), float(p.effective_range)
    (1.0, 1498.0)
    """

    family_code: object
    nugget: object
    psill: object
    length_scale: object
    alpha: object
    effective_range: object
    active: object

    @classmethod
    def unpack(cls, params):
        """Names the entries of a 1-D vector (numpy or tensor)."""
        if isinstance(params, (np.ndarray, list, tuple)):
            return cls(*(params[i] for i in range(len(cls._fields))))
        # One operator for a tensor (eager PyTorch runs 7 indexings apart).
        return cls(*ops.unstack(params, num=len(cls._fields)))

    @property
    def sill(self):
        return self.nugget + self.psill


PARAM_NAMES = PackedParams._fields
NUM_PARAMS = len(PARAM_NAMES)


def check_family(family):
    """Returns `family`, or raises a `ValueError` naming the choices."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}; got {family!r}.")
    return family


def fixed_alpha(family):
    """The shape exponent fixed by `family`, or None for `stable`."""
    return _FIXED_ALPHA.get(family)


def shape(u, family, alpha=1.0):
    """Normalised variogram shape in numpy (0 at u=0, 1 at infinity)."""
    u = np.maximum(np.asarray(u, dtype="float64"), 0.0)
    if check_family(family) == "spherical":
        return np.where(u < 1.0, 1.5 * u - 0.5 * u**3, 1.0)
    alpha = fixed_alpha(family) or alpha
    return 1.0 - np.exp(-(u**alpha))


def evaluate(h, family, nugget, psill, length_scale, alpha=1.0):
    """`gamma(h)` in numpy for distances `h` (km)."""
    return nugget + psill * shape(np.asarray(h) / length_scale, family, alpha)


def effective_range(family, length_scale, alpha=1.0):
    """Distance where gamma reaches nugget + 95 % of the partial sill.

    Example:

    >>> round(effective_range("exponential", 1000.0), 1)  # 1000 * ln 20
    2995.7
    """
    if check_family(family) == "spherical":
        return _SPHERICAL_U95 * length_scale
    alpha = fixed_alpha(family) or alpha
    return length_scale * math.log(20.0) ** (1.0 / alpha)


def evaluate_ops(h, params):
    """`gamma(h)` in `keras.ops` from packed parameters.

    Args:
        h: float tensor of distances in km (any shape).
        params: a `PackedParams`, or a float tensor `(NUM_PARAMS,)` laid
            out as `PARAM_NAMES`.
    """
    if not isinstance(params, PackedParams):
        params = PackedParams.unpack(params)
    h = ops.cast(h, "float32")
    u = ops.maximum(h, 0.0) / ops.maximum(params.length_scale, 1e-6)
    stable = 1.0 - ops.exp(-backend.power(u, params.alpha))
    spherical = ops.where(u < 1.0, 1.5 * u - 0.5 * u * u * u, 1.0)
    is_spherical = ops.abs(params.family_code - FAMILY_CODES["spherical"]) < 0.5
    shaped = ops.where(is_spherical, spherical, stable)
    return params.nugget + params.psill * shaped
