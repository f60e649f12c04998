"""Spherical-harmonic location encoding with a SIREN (Rußwurm et al. 2024).

Rußwurm, Klemmer, Rolf, Zbinden & Tuia, "Geographic Location Encoding with
Spherical Harmonics and Sinusoidal Representation Networks", ICLR 2024.
"""

import math

import keras
import numpy as np
from keras import ops

from geovario_keras import backend
from geovario_keras.api_export import register
from geovario_keras.layers.siren import SirenDense
from geovario_keras.utils import check_int
from geovario_keras.utils import check_positive
from geovario_keras.utils import gps_input_shape


def _nested_tuple(array):
    if array.ndim == 1:
        return tuple(array.tolist())
    return tuple(_nested_tuple(row) for row in array)


def _legendre_tables(degree):
    """Constants of the normalised associated Legendre recurrence (float64).

    With `x = cos(colatitude)`, `s = sin(colatitude)` and the functions
    normalised so that the real harmonics below are orthonormal on the unit
    sphere (no Condon-Shortley phase):

    - diagonal: `P_m^m = d_m s^m`, `d_0 = 1 / sqrt(4 pi)`,
      `d_m = d_{m-1} sqrt((2m + 1) / (2m))`;
    - column `m`, degree `l > m`: `P_l^m = a_lm x P_{l-1}^m - b_lm
      P_{l-2}^m`, `a_lm = sqrt((2l - 1)(2l + 1) / ((l - m)(l + m)))`,
      `b_lm = sqrt((2l + 1)(l + m - 1)(l - m - 1) / ((l - m)(l + m)(2l - 3)))`.

    This is the forward column recurrence of the fully normalised functions
    used in geodesy (e.g. Holmes & Featherstone, J. Geodesy 2002): every
    quantity stays of order one, so unlike the factorial closed form it
    neither overflows nor loses digits at high degree. Returns
    `(diag, a, b)`: `diag` `(L + 1,)`, `a`, `b` `(L + 1, L + 1)` indexed
    `[l, m]` and zero where `m >= l`.
    """
    size = degree + 1
    m = np.arange(size, dtype="float64")
    ratio = np.sqrt((2.0 * m[1:] + 1.0) / (2.0 * m[1:]))
    diag = np.concatenate([[1.0], np.cumprod(ratio)]) / math.sqrt(4 * math.pi)
    a = np.zeros((size, size))
    b = np.zeros((size, size))
    for l in range(1, size):  # noqa: E741 (the degree is `l` by convention)
        mm = m[:l]
        a[l, :l] = np.sqrt((2 * l - 1) * (2 * l + 1) / ((l - mm) * (l + mm)))
        if l >= 2:
            num = (2 * l + 1) * (l + mm - 1) * (l - mm - 1)
            den = (l - mm) * (l + mm) * (2 * l - 3)
            b[l, :l] = np.sqrt(np.maximum(num, 0.0) / den)
    return diag, a, b


# Beyond this degree the diagonal seed `sin(colatitude) ** m` of orders
# m ~ L / e underflows float32 (e^(-L / e) < 1e-38 for L > ~238) while the
# functions it seeds are of order one at higher degrees: the recurrence
# would silently return zeros there.
MAX_DEGREE = 200


def check_degree(degree):
    """Raises a `ValueError` unless `degree` is an int in [0, MAX_DEGREE]."""
    check_int("degree", degree, 0)
    if degree > MAX_DEGREE:
        raise ValueError(
            f"`degree` must be <= {MAX_DEGREE} (float32 spherical harmonics "
            "are accurate up to there; beyond it sin(colatitude) ** m "
            f"underflows); got {degree}."
        )
    return degree


def harmonic_order(degree):
    """The `(l, m)` of each output column of `SphericalHarmonics(degree)`.

    Degrees `l = 0 .. degree`, and within each degree the orders
    `m = -l .. l`: `(degree + 1) ** 2` columns.

    >>> harmonic_order(1).tolist()
    [[0, 0], [1, -1], [1, 0], [1, 1]]
    """
    return np.array(
        [(l, m) for l in range(degree + 1) for m in range(-l, l + 1)]  # noqa: E741
    )


@register
class SphericalHarmonics(keras.layers.Layer):
    """Real spherical harmonics of (latitude, longitude), up to `degree`.

    For colatitude `theta = 90 - latitude` and longitude `phi`, the
    real orthonormal harmonics (no Condon-Shortley phase)

    - `Y_l^0 = P_l^0(cos theta)`,
    - `Y_l^m = sqrt(2) P_l^m(cos theta) cos(m phi)` for `m > 0`,
    - `Y_l^-m = sqrt(2) P_l^m(cos theta) sin(m phi)`,

    with `P_l^m` the associated Legendre functions normalised so that
    `integral of Y_l^m Y_l'^m' over the sphere = delta_ll' delta_mm'`. The
    Legendre functions come from a stable recurrence on normalised values
    (each step multiplies numbers of order one), so the layer is finite and
    accurate in float32 far beyond the degree-30 limit of the factorial
    closed form: checked against `scipy.special.sph_harm_y` up to degree
    200, the largest degree accepted (see the tests; BENCHMARKS.md gives
    the errors). Columns are ordered
    by degree, then order (`harmonic_order(degree)`).

    The encoding is continuous on the sphere: longitudes -180 and 180 give
    the same values (the phase `m * phi` is reduced modulo 360 degrees
    before the sine and cosine), and at either pole every `m != 0` term is
    exactly zero, so every longitude gives the same values.

    It always computes in float32 and casts only the output to the compute
    dtype (a bfloat16 longitude would carry an error of ~0.5 degree).

    Args:
        degree: int in [0, 200]. Highest degree `L`; the output has
            `(L + 1) ** 2` values. A degree-`L` expansion resolves
            features down to about `20,000 / L` km (half a wavelength).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor `(..., 2)` of (latitude, longitude) in degrees.

    Returns:
        Tensor `(..., (degree + 1) ** 2)`.

    Example:

    >>> sh = SphericalHarmonics(degree=2)
    >>> y = sh(np.array([[90.0, 0.0], [90.0, 123.0]], "float32"))
    >>> tuple(y.shape)
    (2, 9)
    >>> # At the north pole only the m = 0 terms remain: sqrt((2l + 1) / 4 pi)
    >>> keras.ops.convert_to_numpy(y)[0].astype("float64").round(4).tolist()
    [0.2821, 0.0, 0.4886, 0.0, 0.0, 0.0, 0.6308, 0.0, 0.0]
    """

    def __init__(self, degree=10, **kwargs):
        super().__init__(**kwargs)
        check_degree(degree)
        self.degree = degree
        size = degree + 1
        diag, a, b = _legendre_tables(degree)
        parity = np.add.outer(np.arange(size), np.arange(size)) % 2
        # Columns of [cos part (l, m >= 0) ; sin part (l, m > 0)], each
        # flattened as l * size + m, gathered into (l, m = -l .. l) order.
        lm = harmonic_order(degree)
        gather = np.where(
            lm[:, 1] >= 0,
            lm[:, 0] * size + lm[:, 1],
            size * size + lm[:, 0] * size - lm[:, 1],
        )
        cos_weights = np.full(size, math.sqrt(2.0))
        cos_weights[0] = 1.0
        # The tables as Python numbers (nested tuples, with their dtype),
        # made tensors in the step by `backend.constant`: `torch.compile`
        # folds them into its graph, where it would trace a numpy array as
        # a tensor (its conversion splits the step).
        self._tables = {
            name: (_nested_tuple(table.astype(dtype)), dtype)
            for name, table, dtype in (
                ("diag", diag, "float32"),
                ("a", a, "float32"),
                ("b", b, "float32"),
                ("orders", np.arange(size), "float32"),
                ("odd", parity, "float32"),  # (l + m) odd
                ("gather", gather, "int32"),
                ("cos_weights", cos_weights, "float32"),
            )
        }

    @property
    def input_dtype(self):
        return "float32"

    def build(self, input_shape):
        gps_input_shape(self, input_shape, "(..., 2)")
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        batch_shape = ops.shape(x)[:-1]
        x = ops.reshape(x, (-1, 2))
        lat, lon = x[:, 0], x[:, 1]
        size = self.degree + 1
        legendre = self._legendre(lat)  # (N, l, m), zero where m > l
        cos, sin = self._phases(lon)  # (N, m) each, with their weights
        parts = ops.concatenate(
            [
                ops.reshape(legendre * cos[:, None, :], (-1, size * size)),
                ops.reshape(legendre * sin[:, None, :], (-1, size * size)),
            ],
            axis=1,
        )
        out = ops.take(parts, self._constant("gather", x), axis=1)
        out = ops.reshape(out, tuple(batch_shape) + (size * size,))
        return ops.cast(out, self.compute_dtype)

    def _legendre(self, lat):
        """Normalised associated Legendre functions `(N, l, m)` of the
        colatitude, by the three-term recurrence over the degree."""
        size = self.degree + 1
        rad = math.pi / 180.0
        # The recurrence runs on the northern hemisphere, |latitude|, in
        # terms of u = 1 - cos(colatitude): near a pole u is tiny and exact
        # to float32's relative precision, where cos(colatitude) itself
        # would be rounded to ~3e-8 next to 1 (an error the degree-l terms
        # amplify ~l^2 / 2 times). The south follows from the parity
        # P_l^m(-x) = (-1)^(l + m) P_l^m(x).
        north = ops.abs(lat)
        polar = north >= 45.0
        # Colatitude in radians; 90 - |lat| is exact for |lat| >= 45.
        colat = ops.where(polar, 90.0 - north, 45.0) * rad
        s = ops.where(polar, ops.sin(colat), ops.cos(north * rad))
        half = ops.sin(0.5 * colat)
        u = ops.where(polar, 2.0 * half * half, 1.0 - ops.sin(north * rad))
        # sin(colatitude) exactly 0 at the poles: no trace of longitude.
        s = ops.where(north >= 90.0, 0.0, s)
        orders = self._constant("orders", lat)
        table_a = self._constant("a", lat)
        table_b = self._constant("b", lat)
        table_diag = self._constant("diag", lat)
        # s ** m as a running product (differentiable at s = 0, unlike pow).
        powers = ops.concatenate(
            [ops.ones_like(s)[:, None], ops.repeat(s[:, None], size - 1, 1)],
            axis=1,
        )
        diag = ops.cumprod(powers, axis=1) * table_diag[None, :]
        prev2 = ops.zeros_like(diag)
        prev = diag * ops.cast(orders == 0.0, "float32")[None, :]
        rows = [prev]
        for l in range(1, size):  # noqa: E741
            a = table_a[l][None, :]
            b = table_b[l][None, :]
            on_diagonal = ops.cast(orders == float(l), "float32")[None, :]
            # a x P_{l-1} - b P_{l-2} with x = 1 - u.
            current = (a * prev - b * prev2) - a * u[:, None] * prev
            current = current + diag * on_diagonal
            rows.append(current)
            prev2, prev = prev, current
        legendre = ops.stack(rows, axis=1)
        odd = self._constant("odd", lat)
        south = ops.cast(lat < 0.0, "float32")[:, None, None]
        return legendre * (1.0 - 2.0 * south * odd[None])

    def _phases(self, lon):
        """`cos(m phi)` and `sin(m phi)` `(N, m)`, with their weights, from
        a phase reduced modulo 360 degrees before the radians."""
        orders = self._constant("orders", lon)
        # m * phi in degrees, reduced modulo 360 before the radians: the
        # whole degrees of the longitude times m are exact integers, so the
        # seam at +-180 is exact and the phase error stays ~1e-7 rad at any
        # m (a float32 product m * phi would be off by ~m * 1e-5 degrees).
        whole = ops.round(lon)
        phase = ops.mod(whole[:, None] * orders[None, :], 360.0)
        phase = phase + (lon - whole)[:, None] * orders[None, :]
        phase = ops.mod(phase, 360.0) * (math.pi / 180.0)
        cos_weights = self._constant("cos_weights", lon)
        cos = ops.cos(phase) * cos_weights[None, :]
        sin = ops.sin(phase) * math.sqrt(2.0)
        return cos, sin

    def _constant(self, name, like):
        values, dtype = self._tables[name]
        return backend.constant(values, dtype, like)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + ((self.degree + 1) ** 2,)

    def get_config(self):
        config = super().get_config()
        config.update({"degree": self.degree})
        return config


@register
class SphericalHarmonicsLocationEncoder(keras.layers.Layer):
    """Spherical harmonics followed by a SIREN (Rußwurm et al., ICLR 2024).

    `SphericalHarmonics(degree)`, then `hidden_layers` `SirenDense` layers
    of `hidden_units` (the first with frequency `w0_initial`, the others
    with `w0`), then a linear `SirenDense` head to `embed_dim`. Unlike
    GeoCLIP's `LocationEncoder` (Equal Earth projection + Fourier
    features), the encoding lives on the sphere: no seam at the
    antimeridian, no distortion near the poles. A drop-in for
    `GeoCLIP(location_encoder=...)`.

    The harmonics and the first sine layer (whose phases reach ~`w0_initial`
    radians) run in float32 whatever the dtype policy; the other layers use
    the policy's compute dtype.

    Args:
        degree: int in [0, 200]. Highest harmonic degree `L` (`(L + 1) ** 2`
            inputs to the SIREN). Rußwurm et al. and SatCLIP use 10 for
            coarse and 40 for finer global tasks; on the demo's Blue Marble
            data a validation split preferred 20 (BENCHMARKS.md, "Location
            encoders").
        hidden_units: int. Width of the sine layers.
        hidden_layers: int >= 1. Number of sine layers.
        embed_dim: int. Output embedding size.
        w0: float > 0. Frequency factor of the sine layers after the first.
        w0_initial: float > 0. Frequency factor of the first sine layer.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `(N, 2)` of (latitude, longitude) in degrees.

    Returns:
        Tensor `(N, embed_dim)`, not normalised.

    Example:

    >>> enc = SphericalHarmonicsLocationEncoder(
    ...     degree=10, hidden_units=64, hidden_layers=2, embed_dim=32)
    >>> gps = np.array([[48.86, 2.35], [-33.87, 151.21]], "float32")
    >>> tuple(enc(gps).shape)
    (2, 32)
    """

    def __init__(
        self,
        degree=20,
        hidden_units=512,
        hidden_layers=2,
        embed_dim=512,
        w0=1.0,
        w0_initial=30.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_degree(degree)
        check_int("hidden_units", hidden_units)
        check_int("hidden_layers", hidden_layers)
        check_int("embed_dim", embed_dim)
        self.degree = degree
        self.hidden_units = hidden_units
        self.hidden_layers = hidden_layers
        self.embed_dim = embed_dim
        self.w0 = check_positive("w0", w0)
        self.w0_initial = check_positive("w0_initial", w0_initial)
        self.harmonics = SphericalHarmonics(
            degree, dtype="float32", name="harmonics"
        )
        self.hidden = [
            SirenDense(
                hidden_units,
                w0=self.w0_initial if i == 0 else self.w0,
                is_first=i == 0,
                dtype="float32" if i == 0 else self.dtype_policy,
                name=f"siren_{i}",
            )
            for i in range(hidden_layers)
        ]
        self.head = SirenDense(
            embed_dim,
            w0=self.w0,
            sine=False,
            dtype=self.dtype_policy,
            name="head",
        )

    @property
    def input_dtype(self):
        return "float32"

    def build(self, input_shape):
        shape = gps_input_shape(self, input_shape)
        self.harmonics.build(shape)
        shape = self.harmonics.compute_output_shape(shape)
        for layer in self.hidden + [self.head]:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, inputs):
        x = self.harmonics(inputs)
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "degree": self.degree,
                "hidden_units": self.hidden_units,
                "hidden_layers": self.hidden_layers,
                "embed_dim": self.embed_dim,
                "w0": self.w0,
                "w0_initial": self.w0_initial,
            }
        )
        return config
