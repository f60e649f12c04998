"""Real orthonormal spherical harmonics from scipy, the tests' reference.

`scipy.special.sph_harm_y` gives the complex harmonics with the
Condon-Shortley phase. The real ones without it, in the column order of
`gv.layers.SphericalHarmonics`, are `Y_lm = sqrt(2) (-1)^m Re Y_l^m` (cos
part, m > 0), `Y_l,-m = sqrt(2) (-1)^m Im Y_l^m` (sin part) and
`Y_l0 = Y_l^0`.
"""

import math

import numpy as np
import scipy.special

from geovario_keras.layers.spherical_harmonics import harmonic_order


def real_harmonics(gps, degree):
    """`(N, (degree + 1) ** 2)` float64 harmonics of (lat, lon) degrees."""
    gps = np.asarray(gps, "float64")
    theta = np.radians(90.0 - gps[:, 0])
    phi = np.radians(gps[:, 1])
    columns = []
    for l, m in harmonic_order(degree):  # noqa: E741
        y = scipy.special.sph_harm_y(l, abs(m), theta, phi)
        sign = (-1.0) ** abs(m)
        if m > 0:
            columns.append(math.sqrt(2.0) * sign * y.real)
        elif m < 0:
            columns.append(math.sqrt(2.0) * sign * y.imag)
        else:
            columns.append(y.real)
    return np.stack(columns, 1)
