"""Robust weighted least-squares fit of a variogram model."""

import dataclasses
import warnings

import numpy as np
from scipy import optimize
from scipy import stats

from geovario_keras.semivariogram import models


@dataclasses.dataclass
class VariogramFit:
    """A fitted variogram, or the fallback when no fit could be trusted.

    Attributes:
        model: model name (`gv.semivariogram.MODELS`).
        nugget, psill, length_scale, alpha: parameters (see
            `gv.semivariogram.models`).
        sill: `nugget + psill`.
        effective_range_km: where gamma reaches nugget + 95 % of psill.
        rmse: count-weighted root-mean-square residual of the fit.
        converged: False for the fallback; then the loss applies no
            re-weighting (plain GeoCLIP loss).
        message: why the fit fell back, or the optimiser's message.
        num_bins: number of bins used.
    """

    model: str
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

    def __call__(self, h_km):
        """Evaluates the fitted curve at `h_km` (numpy)."""
        return models.evaluate(
            h_km,
            self.model,
            self.nugget,
            self.psill,
            self.length_scale,
            self.alpha,
        )

    def packed(self):
        """Parameter vector laid out as `models.PARAM_NAMES` (float32)."""
        return np.array(
            [
                models.MODEL_CODES[self.model],
                self.nugget,
                self.psill,
                self.length_scale,
                self.alpha,
                self.effective_range_km,
                1.0 if self.converged else 0.0,
            ],
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


def _fallback(model, message, num_bins=0, warn=True):
    if warn:
        warnings.warn(
            f"Semivariogram fit fell back to no re-weighting: {message}",
            RuntimeWarning,
            stacklevel=3,
        )
    return VariogramFit(model=model, message=message, num_bins=num_bins)


def fit_variogram(
    centers_km,
    gamma,
    counts,
    model="stable",
    min_bins=4,
    min_count=1,
    f_scale=None,
    max_length_scale_km=None,
    warn=True,
):
    """Fits `model` to an empirical semivariogram.

    Robust weighted least squares (`scipy.optimize.least_squares`,
    `loss="soft_l1"`): residual of bin `k` is
    `sqrt(n_k / mean(n)) * (gamma_model(h_k) - gamma_k)`, so bins count in
    proportion to their pairs, and residuals beyond `f_scale` (default: 10 %
    of the empirical curve's amplitude) are down-weighted as outliers.
    Bounds: nugget, psill >= 0; length scale in
    `(0, max_length_scale_km]`; stable alpha in `[0.05, 2]`.

    The fit **falls back** (returns `converged=False` and warns; the loss then
    applies no re-weighting, never NaN) when fewer than `min_bins` bins hold
    `min_count` pairs, the curve is flat (amplitude below 1e-6 or no
    structured part), it does not rise with distance (Spearman correlation
    of gamma with distance <= 0), or the optimiser fails.

    Args:
        centers_km: bin centres `(K,)` in km.
        gamma: empirical semivariance per bin `(K,)`.
        counts: pairs per bin `(K,)`.
        model: one of `"stable"`, `"exponential"`, `"gaussian"`,
            `"spherical"`.
        min_bins: int. Minimum number of usable bins.
        min_count: minimum pairs for a bin to be used.
        f_scale: soft-L1 scale (see above).
        max_length_scale_km: upper bound of the length scale; default 4x the
            largest bin centre.
        warn: whether a fallback emits a `RuntimeWarning`.

    Returns:
        A `VariogramFit`.
    """
    models.check_model(model)
    h = np.asarray(centers_km, "float64").reshape(-1)
    g = np.asarray(gamma, "float64").reshape(-1)
    n = np.asarray(counts, "float64").reshape(-1)
    if not h.shape == g.shape == n.shape:
        raise ValueError(
            "`centers_km`, `gamma` and `counts` must have the same length; "
            f"got {h.shape}, {g.shape}, {n.shape}."
        )
    keep = (n >= max(min_count, 1)) & np.isfinite(g) & np.isfinite(h)
    h, g, n = h[keep], g[keep], n[keep]
    if h.size < min_bins:
        return _fallback(
            model,
            f"only {h.size} bins hold >= {min_count} pairs (min_bins="
            f"{min_bins}).",
            h.size,
            warn,
        )
    amplitude = float(g.max() - g.min())
    if amplitude < 1e-6:
        return _fallback(
            model,
            f"flat empirical curve (amplitude {amplitude:.2e}).",
            h.size,
            warn,
        )
    rho = stats.spearmanr(h, g).statistic
    if not rho > 0:
        return _fallback(
            model,
            f"the empirical curve does not rise with distance (Spearman "
            f"correlation {rho:.2f}).",
            h.size,
            warn,
        )

    w = np.sqrt(n / n.mean())
    f_scale = f_scale or 0.1 * amplitude
    h_max = max_length_scale_km or 4.0 * float(h.max())
    alpha0 = models.fixed_alpha(model)
    free_alpha = model == "stable"

    def unpack(p):
        return p[0], p[1], p[2], (p[3] if free_alpha else alpha0 or 1.0)

    def residual(p):
        nugget, psill, length, alpha = unpack(p)
        return w * (models.evaluate(h, model, nugget, psill, length, alpha) - g)

    # Initial guess: nugget from the first bin, sill from the upper third,
    # length scale from where half the rise is reached.
    g_lo = max(float(g[0]), 0.0)
    g_hi = float(np.median(g[-max(1, h.size // 3) :]))
    half = g_lo + 0.5 * max(g_hi - g_lo, 0.0)
    length0 = float(h[np.argmax(g >= half)]) if np.any(g >= half) else h.mean()
    length0 = float(np.clip(length0, 1e-3 * h_max, h_max))
    p0 = [
        min(g_lo, max(g_hi, 1e-6) * 0.99),
        max(g_hi - g_lo, 1e-6),
        length0,
    ]
    lower = [0.0, 0.0, 1e-6 * h_max]
    upper = [max(g.max(), 1e-6) * 2, max(g.max(), 1e-6) * 4, h_max]
    if free_alpha:
        p0.append(1.0)
        lower.append(0.05)
        upper.append(2.0)
    p0 = np.clip(p0, lower, upper)
    try:
        result = optimize.least_squares(
            residual,
            p0,
            bounds=(lower, upper),
            loss="soft_l1",
            f_scale=f_scale,
        )
    except Exception as e:  # pragma: no cover - scipy internal failure
        return _fallback(model, f"optimiser error: {e}", h.size, warn)
    nugget, psill, length, alpha = (float(v) for v in unpack(result.x))
    if not (result.success and np.all(np.isfinite(result.x))):
        return _fallback(
            model, f"optimiser failed: {result.message}", h.size, warn
        )
    if psill <= 1e-9 * max(amplitude, 1e-12):
        return _fallback(
            model,
            "the fit has no structured part (partial sill ~ 0).",
            h.size,
            warn,
        )
    fitted = models.evaluate(h, model, nugget, psill, length, alpha)
    rmse = float(np.sqrt(np.sum(n * (fitted - g) ** 2) / np.sum(n)))
    return VariogramFit(
        model=model,
        nugget=nugget,
        psill=psill,
        length_scale=length,
        alpha=alpha,
        sill=nugget + psill,
        effective_range_km=float(models.effective_range(model, length, alpha)),
        rmse=rmse,
        converged=True,
        message=str(result.message),
        num_bins=int(h.size),
    )
