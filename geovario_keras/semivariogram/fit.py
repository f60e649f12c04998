"""Robust weighted least-squares fit of a variogram model."""

import dataclasses
import warnings

import numpy as np
from scipy import optimize
from scipy import stats

from geovario_keras.semivariogram import models


@dataclasses.dataclass(init=False)
class VariogramFit:
    """A fitted variogram, or the fallback when no fit could be trusted.

    Attributes:
        family: the variogram family (`gv.semivariogram.models.FAMILIES`).
            `model` is its deprecated name (keyword and attribute).
        nugget, psill, length_scale, alpha: parameters (see
            `gv.semivariogram.models`).
        sill: `nugget + psill`.
        effective_range_km: where gamma reaches nugget + 95 % of psill.
        rmse: count-weighted root-mean-square residual of the fit.
        converged: False for the fallback; then the loss applies no
            re-weighting (plain GeoCLIP loss).
        message: why the fit fell back, or the optimiser's message.
        num_bins: number of bins used.

    Example:

    >>> fit = VariogramFit("exponential", nugget=0.1, psill=0.5,
    ...                    length_scale=1000.0, converged=True)
    >>> round(float(fit(1000.0)), 4)  # 0.1 + 0.5 * (1 - 1/e)
    0.4161
    """

    family: str
    nugget: float = 0.0
    psill: float = 0.0
    length_scale: float = 1.0
    alpha: float = 1.0
    sill: float = 0.0
    effective_range_km: float = 0.0
    rmse: float = float("nan")
    converged: bool = False
    message: str = ""
    num_bins: int = 0

    def __init__(
        self,
        family=None,
        nugget=0.0,
        psill=0.0,
        length_scale=1.0,
        alpha=1.0,
        sill=None,
        effective_range_km=None,
        rmse=float("nan"),
        converged=False,
        message="",
        num_bins=0,
    ):
        self.family = models.check_family(family)
        self.nugget = float(nugget)
        self.psill = float(psill)
        self.length_scale = float(length_scale)
        self.alpha = float(alpha)
        self.sill = self.nugget + self.psill if sill is None else float(sill)
        if effective_range_km is None:
            effective_range_km = models.effective_range(
                self.family, self.length_scale, self.alpha
            )
        self.effective_range_km = float(effective_range_km)
        self.rmse = float(rmse)
        self.converged = bool(converged)
        self.message = message
        self.num_bins = int(num_bins)

    def __call__(self, h_km):
        """Evaluates the fitted curve at `h_km` (numpy)."""
        return models.evaluate(
            h_km,
            self.family,
            self.nugget,
            self.psill,
            self.length_scale,
            self.alpha,
        )

    def packed(self):
        """Parameters as one float32 vector laid out as `PARAM_NAMES`."""
        return np.array(
            models.PackedParams(
                family_code=models.FAMILY_CODES[self.family],
                nugget=self.nugget,
                psill=self.psill,
                length_scale=self.length_scale,
                alpha=self.alpha,
                effective_range=self.effective_range_km,
                active=1.0 if self.converged else 0.0,
            ),
            "float32",
        )

    def as_logs(self, prefix="variogram_"):
        """Scalars for Keras `logs` / History."""
        return {
            f"{prefix}nugget": self.nugget,
            f"{prefix}sill": self.sill,
            f"{prefix}range_km": self.effective_range_km,
            f"{prefix}alpha": self.alpha,
            f"{prefix}rmse": self.rmse,
            f"{prefix}converged": float(self.converged),
        }


WEIGHTINGS = ("counts", "cressie")


def check_weighting(weighting):
    """`weighting` if it is one of `WEIGHTINGS`, else a `ValueError`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"`weighting` must be one of {WEIGHTINGS}; got {weighting!r}."
        )
    return weighting


def _fallback(family, message, num_bins=0, warn=True):
    if warn:
        warnings.warn(
            f"Semivariogram fit fell back to no re-weighting: {message}",
            RuntimeWarning,
            stacklevel=3,
        )
    return VariogramFit(
        family, effective_range_km=0.0, message=message, num_bins=num_bins
    )


def _usable_bins(centers_km, gamma, counts, min_count):
    h = np.asarray(centers_km, "float64").reshape(-1)
    g = np.asarray(gamma, "float64").reshape(-1)
    n = np.asarray(counts, "float64").reshape(-1)
    if not h.shape == g.shape == n.shape:
        raise ValueError(
            "`centers_km`, `gamma` and `counts` must have the same length; "
            f"got {h.shape}, {g.shape}, {n.shape}."
        )
    keep = (n >= max(min_count, 1)) & np.isfinite(h)
    return h[keep], g[keep], n[keep]


def _poor_fit(h, g, n, fitted, effective_range, min_r2):
    """Why a converged fit is not to be trusted, or None."""
    const = np.sum(n * (g - np.average(g, weights=n)) ** 2)
    r2 = 1.0 - np.sum(n * (fitted - g) ** 2) / max(const, 1e-300)
    if r2 < min_r2:
        return (
            f"the fit explains {r2:.0%} of the spread of the bins around a "
            f"constant (min_r2={min_r2:.0%}): no spatial structure to trust."
        )
    if effective_range > h.max():
        return (
            f"the effective range ({effective_range:,.0f} km) lies beyond "
            f"the largest distance observed ({h.max():,.0f} km)."
        )
    return None


def _untrustworthy(h, g, min_bins, min_count):
    """Why the empirical curve cannot be fitted, or None."""
    if not np.all(np.isfinite(g)):
        return (
            f"{int(np.sum(~np.isfinite(g)))} bins hold NaN or infinite "
            "dissimilarities (non-finite image embeddings?)."
        )
    if h.size < min_bins:
        return (
            f"only {h.size} bins hold >= {min_count} pairs (min_bins="
            f"{min_bins})."
        )
    amplitude = float(g.max() - g.min())
    if amplitude < 1e-6:
        return f"flat empirical curve (amplitude {amplitude:.2e})."
    rho = stats.spearmanr(h, g).statistic
    if not rho > 0:
        return (
            "the empirical curve does not rise with distance (Spearman "
            f"correlation {rho:.2f})."
        )
    return None


def _start_and_bounds(h, g, h_max, free_alpha):
    """Initial guess: nugget from the first bin, sill from the upper third,
    length scale from where half the rise is reached."""
    g_lo = max(float(g[0]), 0.0)
    g_hi = float(np.median(g[-max(1, h.size // 3) :]))
    half = g_lo + 0.5 * max(g_hi - g_lo, 0.0)
    length0 = float(h[np.argmax(g >= half)]) if np.any(g >= half) else h.mean()
    length0 = float(np.clip(length0, 1e-3 * h_max, h_max))
    p0 = [min(g_lo, max(g_hi, 1e-6) * 0.99), max(g_hi - g_lo, 1e-6), length0]
    lower = [0.0, 0.0, 1e-6 * h_max]
    upper = [max(g.max(), 1e-6) * 2, max(g.max(), 1e-6) * 4, h_max]
    if free_alpha:
        p0.append(1.0)
        lower.append(0.05)
        upper.append(2.0)
    return np.clip(p0, lower, upper), lower, upper


def _least_squares(h, g, n, family, weighting, f_scale, h_max, amplitude):
    """The robust weighted least-squares fit of `fit_variogram`.

    Returns `((nugget, psill, length_scale, alpha), message)`, or
    `(None, reason)` when the optimiser fails.
    """
    w = np.sqrt(n / n.mean())
    free_alpha = family == "stable"
    alpha0 = models.fixed_alpha(family) or 1.0

    def unpack(p):
        return p[0], p[1], p[2], (p[3] if free_alpha else alpha0)

    def residual(p):
        curve = models.evaluate(h, family, *unpack(p))
        if weighting == "cressie":
            return w * (g / np.maximum(curve, 1e-6 * amplitude) - 1.0)
        return w * (curve - g)

    if not f_scale:
        f_scale = 0.1 if weighting == "cressie" else 0.1 * amplitude

    p0, lower, upper = _start_and_bounds(h, g, h_max, free_alpha)
    try:
        result = optimize.least_squares(
            residual,
            p0,
            bounds=(lower, upper),
            loss="soft_l1",
            f_scale=f_scale,
        )
    except Exception as e:  # pragma: no cover - scipy internal failure
        return None, f"optimiser error: {e}"
    if not (result.success and np.all(np.isfinite(result.x))):
        return None, f"optimiser failed: {result.message}"
    return tuple(float(v) for v in unpack(result.x)), str(result.message)


def fit_variogram(
    centers_km,
    gamma,
    counts,
    family=None,
    min_bins=4,
    min_count=1,
    f_scale=None,
    max_length_scale_km=None,
    min_r2=0.5,
    warn=True,
    weighting="counts",
):
    """Fits a variogram `family` to an empirical semivariogram.

    Robust weighted least squares (`scipy.optimize.least_squares`,
    `loss="soft_l1"`). With `weighting="counts"` (default) the residual of
    bin `k` is `sqrt(n_k / mean(n)) * (gamma_model(h_k) - gamma_k)`, so bins
    count in proportion to their pairs, and residuals beyond `f_scale`
    (default: 10 % of the empirical curve's amplitude) are down-weighted as
    outliers. With `weighting="cressie"` it is Cressie's (1985) relative
    residual `sqrt(n_k / mean(n)) * (gamma_k / gamma_model(h_k) - 1)`
    (default `f_scale` 0.1, i.e. 10 %): an error of 0.1 counts far more
    where the semivariance is 0.1 than where it is 1, so the short lags,
    which hold few pairs and small semivariances, are fitted as closely as
    the sill. Pair counts grow with distance, so count weighting lets the
    thousands of kilometres decide the curve and can overestimate the
    semivariance of near pairs several times (BENCHMARKS.md).
    Bounds: nugget, psill >= 0; length scale in
    `(0, max_length_scale_km]`; stable alpha in `[0.05, 2]`.

    The fit **falls back** (returns `converged=False` and warns; the loss then
    applies no re-weighting, never NaN) when fewer than `min_bins` bins hold
    `min_count` pairs, a bin's mean is NaN or infinite, the curve is flat
    (amplitude below 1e-6 or no structured part), it does not rise with
    distance (Spearman correlation of gamma with distance <= 0), the
    optimiser fails, the fitted curve explains less than `min_r2` of the
    count-weighted spread of the bins around a constant (noise without
    spatial structure), or the effective range lies beyond the largest
    distance observed.

    Args:
        centers_km: bin centres `(K,)` in km.
        gamma: empirical semivariance per bin `(K,)`.
        counts: pairs per bin `(K,)`.
        family: one of `"stable"` (default), `"exponential"`,
            `"gaussian"`, `"spherical"`.
        min_bins: int. Minimum number of usable bins.
        min_count: minimum pairs for a bin to be used.
        f_scale: soft-L1 scale (see above).
        max_length_scale_km: upper bound of the length scale; default 4x the
            largest bin centre.
        min_r2: float in [0, 1]. Minimum count-weighted coefficient of
            determination of the fit against a constant.
        warn: whether a fallback emits a `RuntimeWarning`.
        weighting: `"counts"` or `"cressie"` (see above).

    Returns:
        A `VariogramFit`.

    Example:

    >>> h = np.linspace(50.0, 5000.0, 40)
    >>> fit = fit_variogram(h, 0.8 * (1 - np.exp(-h / 700.0)), np.ones(40),
    ...                     family="exponential")
    >>> fit.converged, round(fit.length_scale)
    (True, 700)
    """
    family = "stable" if family is None else family
    models.check_family(family)
    check_weighting(weighting)
    h, g, n = _usable_bins(centers_km, gamma, counts, min_count)
    reason = _untrustworthy(h, g, min_bins, min_count)
    if reason is not None:
        return _fallback(family, reason, h.size, warn)

    amplitude = float(g.max() - g.min())
    h_max = max_length_scale_km or 4.0 * float(h.max())
    params, message = _least_squares(
        h, g, n, family, weighting, f_scale, h_max, amplitude
    )
    if params is None:
        return _fallback(family, message, h.size, warn)
    nugget, psill, length, alpha = params
    if psill <= 1e-9 * max(amplitude, 1e-12):
        return _fallback(
            family,
            "the fit has no structured part (partial sill ~ 0).",
            h.size,
            warn,
        )
    fitted = models.evaluate(h, family, nugget, psill, length, alpha)
    effective_range = models.effective_range(family, length, alpha)
    reason = _poor_fit(h, g, n, fitted, effective_range, min_r2)
    if reason is not None:
        return _fallback(family, reason, h.size, warn)
    return VariogramFit(
        family,
        nugget=nugget,
        psill=psill,
        length_scale=length,
        alpha=alpha,
        rmse=float(np.sqrt(np.sum(n * (fitted - g) ** 2) / np.sum(n))),
        converged=True,
        message=message,
        num_bins=int(h.size),
    )
