"""Fit-time callbacks."""

import os
import warnings

import keras
import numpy as np

from geovario_keras import geo
from geovario_keras.losses import PairStatisticsLoss
from geovario_keras.semivariogram.empirical import EmpiricalSemivariogram
from geovario_keras.semivariogram.fit import check_weighting
from geovario_keras.semivariogram.fit import fit_variogram
from geovario_keras.semivariogram.models import check_family
from geovario_keras.utils import check_int


def variogram_first(callbacks, loss=None):
    """`callbacks` with every `SemivariogramCallback` moved to the front.

    Keras runs callbacks in list order at each epoch end. The variogram fit
    of an epoch must be in the model before a `ModelCheckpoint` or
    `BackupAndRestore` saves it, whatever order the user listed them in;
    `GeoCLIP.fit` applies this to its `callbacks`. It also warns when `loss`
    uses pair statistics but no `SemivariogramCallback` would fit them.
    """
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks[:] = variogram_first(callbacks.callbacks, loss)
        return callbacks
    callbacks = list(callbacks or [])
    first = [c for c in callbacks if isinstance(c, SemivariogramCallback)]
    if isinstance(loss, PairStatisticsLoss) and not first:
        warnings.warn(
            f"{type(loss).__name__} without a `gv.callbacks."
            "SemivariogramCallback` trains as the plain GeoCLIP loss unless a "
            "fit is set with `model.variogram.set_fit(...)`: pass "
            "`callbacks=[gv.callbacks.SemivariogramCallback()]` to `fit`.",
            UserWarning,
            stacklevel=3,
        )
    return first + [c for c in callbacks if c not in first]


class SemivariogramCallback(keras.callbacks.Callback):
    """Fits the semivariogram during `model.fit` and feeds it to the loss.

    For a `GeoCLIP` model compiled with `SemivariogramContrastiveLoss` (or
    any `gv.losses.PairStatisticsLoss`):

    - **train begin**: if `data=(x, gps)` is given, `sample_size` of its
      points are embedded (stop-gradient image embeddings, `model.predict`)
      and the empirical semivariogram of all their pairs is fitted, so the
      first epoch is already re-weighted. Otherwise the first epoch runs
      with the plain loss while the model gathers statistics.
    - **epoch end**: every `refit_every` epochs (after `warmup_epochs`), the
      statistics the model accumulated in its compiled training step (batch
      and queue pairs of stop-gradient image embeddings) are fitted; the
      fit is assigned into the model's semivariogram state, so the next
      epoch uses it on every backend. The statistics of a fit cover the
      epochs since the previous fit (or since train begin), and are then
      reset, so each fit reflects the recent embedding.
    - The fit's parameters (`variogram_nugget`, `variogram_sill`,
      `variogram_range_km`, `variogram_alpha`, `variogram_rmse`,
      `variogram_converged`) and the fractions of negatives classed false /
      hard during the epoch (`false_negative_frac`, `hard_negative_frac`)
      go into `logs`, hence into `History` and TensorBoard.
    - A fit that cannot be trusted (too few bins, flat or falling curve,
      optimiser failure) warns and disables re-weighting until the next
      successful fit: never NaN.
    - `GeoCLIP.fit` runs this callback before the others at each epoch end,
      so a `ModelCheckpoint` or `BackupAndRestore` saves the epoch's fit;
      the statistics since the last fit are saved with the model and kept
      at train begin, so a resumed run continues exactly.

    Args:
        data: optional `(x, gps)` arrays to fit from at train begin.
        sample_size: int. Points of `data` used (all pairs among them).
        bin_edges_km: bin edges for the `data` fit; default: the model's
            `variogram_bins_km` (the epoch fits always use the model's bins).
        family: the variogram family: `"stable"` (default),
            `"exponential"`, `"gaussian"` or `"spherical"`.
        refit_every: int >= 1. Refit period in epochs.
        warmup_epochs: int >= 0. Epochs trained with the plain loss before
            the first re-weighting. The first fit then uses the statistics
            of the warm-up epochs; `data` is used only when
            `warmup_epochs == 0`.
        min_pairs: minimum pairs for a bin to enter the fit.
        weighting: how the fit weighs the bins: `"counts"` (in proportion
            to their pairs) or `"cressie"` (Cressie's relative residuals, so
            the short lags are fitted as closely as the sill); see
            `gv.semivariogram.fit_variogram`.
        plot_path: optional path of a PNG (empirical points sized by pair
            count, fitted curve, effective range marked), rewritten at each
            fit.
        seed: int. Seed of the `data` subsample.
        verbose: 0 or 1. Print one line per fit.

    Example:

    Image features that vary smoothly with location (here the unit vector
    of each place), so that look-alikes are near one another:

    >>> rng = np.random.default_rng(0)
    >>> gps = np.stack([rng.uniform(-60, 60, 512),
    ...                 rng.uniform(-180, 180, 512)], 1).astype("float32")
    >>> lat, lon = np.radians(gps).T
    >>> x = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon),
    ...               np.sin(lat)], 1).astype("float32")
    >>> model = gv.GeoCLIP(
    ...     gv.layers.ImageEncoder(None, embed_dim=32, hidden_units=64),
    ...     gv.layers.LocationEncoder(num_features=32, hidden_units=64,
    ...                               hidden_layers=2, embed_dim=32),
    ...     queue_size=256)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3),
    ...               loss=gv.losses.SemivariogramContrastiveLoss())
    >>> history = model.fit(x, gps, batch_size=128, epochs=2, verbose=0,
    ...     callbacks=[gv.callbacks.SemivariogramCallback()])
    >>> [k for k in sorted(history.history) if k.startswith("variogram_r")]
    ['variogram_range_km', 'variogram_rmse']
    """

    def __init__(
        self,
        data=None,
        sample_size=2048,
        bin_edges_km=None,
        family=None,
        refit_every=1,
        warmup_epochs=0,
        min_pairs=10,
        plot_path=None,
        seed=0,
        verbose=0,
        weighting="counts",
    ):
        super().__init__()
        family = "stable" if family is None else family
        check_family(family)
        check_int("refit_every", refit_every, 1)
        check_int("warmup_epochs", warmup_epochs, 0)
        check_int("sample_size", sample_size, 2)
        if data is not None and (
            not isinstance(data, (tuple, list)) or len(data) != 2
        ):
            raise ValueError("`data` must be a pair (x, gps) of arrays.")
        self.data = data
        self.sample_size = sample_size
        self.bin_edges_km = bin_edges_km
        self.family = family
        self.refit_every = refit_every
        self.warmup_epochs = warmup_epochs
        self.min_pairs = min_pairs
        self.weighting = check_weighting(weighting)
        self.plot_path = plot_path
        self.seed = seed
        self.verbose = verbose
        self.fits = []
        self.last_fit = None
        self.last_empirical = None
        self._pending_logs = {}

    def get_config(self):
        """The arguments that decide the fits (not `data`, `plot_path`,
        `verbose`); `gv.training.fit_resumable` keeps them in `run.json`."""
        edges = self.bin_edges_km
        return {
            "sample_size": self.sample_size,
            "bin_edges_km": None
            if edges is None
            else [float(e) for e in edges],
            "family": self.family,
            "refit_every": self.refit_every,
            "warmup_epochs": self.warmup_epochs,
            "min_pairs": self.min_pairs,
            "weighting": self.weighting,
            "seed": self.seed,
            "data": self.data is not None,
        }

    # -------------------------------------------------------------- helpers
    def _state(self):
        state = getattr(self.model, "variogram", None)
        if state is None:
            raise ValueError(
                "SemivariogramCallback needs a `gv.GeoCLIP` model; got "
                f"{type(self.model).__name__}."
            )
        return state

    def _fit(self, sv, epoch):
        centers, gamma, counts = sv.result(min_count=self.min_pairs)
        fit = fit_variogram(
            centers,
            gamma,
            counts,
            family=self.family,
            min_count=self.min_pairs,
            weighting=self.weighting,
        )
        self._state().set_fit(fit)
        self.last_empirical = sv
        self.fits.append((epoch, fit))
        self.last_fit = fit
        self._pending_logs = fit.as_logs()
        if self.plot_path:
            self.plot(sv, fit, self.plot_path, epoch=epoch)
        if self.verbose:
            status = "ok" if fit.converged else f"fallback: {fit.message}"
            print(
                f"SemivariogramCallback (epoch {epoch}): {fit.family} fit "
                f"{status}; nugget={fit.nugget:.4f} sill={fit.sill:.4f} "
                f"range={fit.effective_range_km:.0f} km"
            )
        return fit

    def fit_from_data(self, x, gps, epoch=-1):
        """Fits from `sample_size` points of `(x, gps)` (all their pairs)."""
        gps = geo.check_gps(gps, name="gps")
        n = len(gps)
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(n, min(n, self.sample_size), replace=False))
        x_sample = keras.tree.map_structure(lambda a: np.asarray(a)[pick], x)
        emb = self.model.encode_image(x_sample, verbose=0)
        edges = self.bin_edges_km or self._state().bin_edges_km
        sv = EmpiricalSemivariogram(edges)
        sv.update_from_features(gps[pick], emb)
        return self._fit(sv, epoch)

    # ------------------------------------------------------------ callbacks
    def on_train_begin(self, logs=None):
        state = self._state()
        if not isinstance(self.model.loss, PairStatisticsLoss):
            raise ValueError(
                "SemivariogramCallback needs the model compiled with "
                "a `gv.losses.PairStatisticsLoss` such as "
                "`SemivariogramContrastiveLoss`; got "
                f"{self.model.loss!r}."
            )
        if self.bin_edges_km is not None and self.data is None:
            if list(np.asarray(self.bin_edges_km, float)) != list(
                state.bin_edges_km
            ):
                raise ValueError(
                    "`bin_edges_km` differs from the model's bins; the "
                    "statistics gathered during training use the model's. "
                    "Pass `variogram_bins_km=...` to `GeoCLIP` instead."
                )
        # The pair statistics are kept: they hold the pairs since the last
        # fit, which a model restored from a checkpoint brings with it.
        if self.data is not None and self.warmup_epochs == 0:
            self.fit_from_data(*self.data, epoch=-1)

    def on_epoch_begin(self, epoch, logs=None):
        # The false / hard fractions are per epoch; the pair statistics run
        # from the last fit (or train begin) to the next one.
        self._state().reset_statistics(pairs=False, negatives=True)

    def on_epoch_end(self, epoch, logs=None):
        state = self._state()
        false_frac, hard_frac = state.negative_fractions()
        done = epoch + 1
        due = done >= max(self.warmup_epochs, 1) and (
            (done - max(self.warmup_epochs, 1)) % self.refit_every == 0
        )
        if due:
            sv = EmpiricalSemivariogram(state.bin_edges_km)
            sv.merge_statistics(*state.statistics())
            self._fit(sv, epoch)
            state.reset_statistics(pairs=True, negatives=False)
        if logs is not None:
            logs.update(self._pending_logs)
            logs["false_negative_frac"] = false_frac
            logs["hard_negative_frac"] = hard_frac

    # ----------------------------------------------------------------- plot
    @staticmethod
    def plot(sv, fit, path, epoch=None):
        """Saves the empirical semivariogram and the fitted curve as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        centers, gamma, counts = sv.result()
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        sizes = 10 + 190 * np.sqrt(counts / max(counts.max(), 1))
        ax.scatter(
            centers, gamma, s=sizes, alpha=0.6, label="empirical (size: pairs)"
        )
        if fit.converged:
            h = np.linspace(0, centers.max() if len(centers) else 1, 400)
            ax.plot(h, fit(h), "r-", lw=2, label=f"{fit.family} fit")
            ax.axvline(
                fit.effective_range_km,
                color="k",
                ls="--",
                label=f"effective range {fit.effective_range_km:.0f} km",
            )
            ax.axhline(
                fit.sill, color="gray", ls=":", label=f"sill {fit.sill:.3f}"
            )
        else:
            ax.set_title(f"fit fell back: {fit.message}", fontsize=8)
        ax.set_xlabel("great-circle distance (km)")
        ax.set_ylabel("semivariance (1 - cos)")
        if epoch is not None and fit.converged:
            ax.set_title(f"semivariogram after epoch {epoch + 1}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
