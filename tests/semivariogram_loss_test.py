import warnings

import keras
import numpy as np
import pytest

import geovario_keras as gv
from geovario_keras.semivariogram import models
from tests.testing import backend
from tests.testing import random_gps
from tests.testing import run_loss_test
from tests.testing import small_geoclip
from tests.testing import to_numpy
from tests.testing import toy_features

# A 3 x 5 example: 3 images, candidates [batch (3) ; queue (2)].
LOGITS = np.array(
    [
        [2.0, 0.5, -1.0, 0.3, 1.1],
        [0.1, 1.5, 0.2, -0.4, 2.2],
        [1.0, 1.0, 3.0, 0.0, -2.0],
    ],
    "float32",
)
H = np.array(
    [
        [0, 300, 4000, 100, 6000],
        [300, 0, 3500, 250, 800],
        [4000, 3500, 0, 5000, 9000],
    ],
    "float32",
)
D = np.array(
    [
        [0.0, 0.1, 0.2, 0.9, 0.3],
        [0.1, 0.0, 0.9, 0.05, 0.2],
        [0.2, 0.9, 0.0, 0.1, 0.95],
    ],
    "float32",
)
# Exponential variogram: nugget 0.1, psill 0.8, length 500 km -> sill 0.9,
# effective range 500 ln 20 = 1497.9 km.
FIT = gv.semivariogram.VariogramFit(
    family="exponential",
    nugget=0.1,
    psill=0.8,
    length_scale=500.0,
    alpha=1.0,
    sill=0.9,
    effective_range_km=500.0 * np.log(20.0),
    converged=True,
)
TARGETS = np.array([0, 1, 2])


def _y_pred(fit=FIT, queue_full=1.0):
    return {
        "logits": LOGITS,
        "candidate_mask": np.ones(5, bool),
        "distance_km": H,
        "dissimilarity": D,
        "variogram": fit.packed(),
        "queue_full": np.float32(queue_full),
    }


def _ce(logits):
    logits = logits.astype("float64")
    return np.log(np.exp(logits).sum(1)) - logits[np.arange(3), TARGETS]


def _gamma(h):
    return 0.1 + 0.8 * (1 - np.exp(-h.astype("float64") / 500.0))


@pytest.mark.parametrize(
    "false_range, hard_range",
    [(None, None), (250.0, 250.0), (200.0, 2000.0), (5000.0, 100.0)],
)
def test_weighted_mode_matches_hand_computation(false_range, hard_range):
    fnw, beta, wmax = 0.2, 2.0, 5.0
    loss = gv.losses.SemivariogramContrastiveLoss(
        false_negative_weight=fnw,
        hard_negative_beta=beta,
        max_weight=wmax,
        false_negative_range_km=false_range,
        hard_negative_range_km=hard_range,
        reduction=None,
    )
    rho, sill = FIT.effective_range_km, 0.9
    rho_fn = rho if false_range is None else false_range
    rho_hard = rho if hard_range is None else hard_range
    expected = LOGITS.astype("float64").copy()
    for i in range(3):
        for j in range(5):
            if j == TARGETS[i]:
                continue
            r = _gamma(H[i, j]) - D[i, j]
            if H[i, j] <= rho_fn and r > 0:
                expected[i, j] += np.log(fnw)
            elif H[i, j] > rho_hard and r > 0:
                expected[i, j] += np.log(min(np.exp(beta * r / sill), wmax))
    got = to_numpy(loss(TARGETS, _y_pred()))
    np.testing.assert_allclose(got, _ce(expected), rtol=1e-5)
    false, hard = (to_numpy(m) for m in loss.classify_negatives(_y_pred()))
    if false_range is None and hard_range is None:
        # The example exercises both kinds.
        assert false[1, 3] and false[0, 1] and hard[0, 4] and hard[0, 2]
    if hard_range == 250.0:
        # 300 km and 800 km look-alikes: false by default, hard here.
        assert hard[0, 1] and hard[1, 4] and not false[0, 1]


def test_near_scaling_mode_matches_hand_computation():
    loss = gv.losses.SemivariogramContrastiveLoss(
        mode="near_scaling", reduction=None
    )
    rho = FIT.effective_range_km
    expected = LOGITS.astype("float64").copy()
    for i in range(3):
        for j in range(5):
            if j != TARGETS[i] and H[i, j] <= rho:
                expected[i, j] *= np.exp(max(0.0, D[i, j] - _gamma(H[i, j])))
    np.testing.assert_allclose(
        to_numpy(loss(TARGETS, _y_pred())), _ce(expected), rtol=1e-5
    )
    # Not applied before the queue has filled once.
    np.testing.assert_allclose(
        to_numpy(loss(TARGETS, _y_pred(queue_full=0.0))), _ce(LOGITS), rtol=1e-6
    )


def test_equals_plain_loss_without_fit_or_with_unit_weights():
    plain = to_numpy(
        gv.losses.GeoContrastiveLoss(reduction=None)(TARGETS, LOGITS)
    )
    no_fit = gv.semivariogram.VariogramFit(family="stable")  # inactive
    for mode in ("weighted", "near_scaling"):
        loss = gv.losses.SemivariogramContrastiveLoss(mode=mode, reduction=None)
        np.testing.assert_array_equal(
            to_numpy(loss(TARGETS, _y_pred(no_fit))), plain
        )
    unit = gv.losses.SemivariogramContrastiveLoss(
        false_negative_weight=1.0, hard_negative_beta=0.0, reduction=None
    )
    np.testing.assert_allclose(
        to_numpy(unit(TARGETS, _y_pred())), plain, rtol=1e-6
    )
    off = gv.losses.SemivariogramContrastiveLoss(
        use_false_negatives=False, use_hard_negatives=False, reduction=None
    )
    np.testing.assert_array_equal(to_numpy(off(TARGETS, _y_pred())), plain)


def test_weight_clipping_and_zero_weight():
    loss = gv.losses.SemivariogramContrastiveLoss(
        hard_negative_beta=50.0, max_weight=3.0
    )
    # The weights as the loss applies them: logits + log w on negatives.
    adjusted = loss.adjust_negative_logits(
        keras.ops.convert_to_tensor(LOGITS), _y_pred()
    )
    w = np.exp(to_numpy(adjusted) - LOGITS)
    w = w[np.arange(5)[None] != TARGETS[:, None]]
    assert w.max() == pytest.approx(3.0, rel=1e-5)
    assert np.all(w >= 0.2 - 1e-6) and np.any(w < 0.2 + 1e-6)
    # Weight 0 removes false negatives from the denominator, finitely.
    zero = gv.losses.SemivariogramContrastiveLoss(
        false_negative_weight=0.0, reduction=None
    )
    got = to_numpy(zero(TARGETS, _y_pred()))
    assert np.all(np.isfinite(got))
    false, _ = (to_numpy(m) for m in zero.classify_negatives(_y_pred()))
    expected = LOGITS.astype("float64").copy()
    expected[false & (np.arange(5)[None] != TARGETS[:, None])] = -1e9
    rho, sill = FIT.effective_range_km, 0.9
    for i, j in zip(*np.nonzero((H > rho) & (_gamma(H) - D > 0))):
        if j != TARGETS[i]:
            expected[i, j] += min(
                2.0 * (_gamma(H[i, j]) - D[i, j]) / sill, np.log(5.0)
            )
    np.testing.assert_allclose(got, _ce(expected), rtol=1e-5)


def test_gradients_are_finite():
    x, gps = toy_features(random_gps(64, seed=0)), random_gps(64, seed=0)
    model = small_geoclip(queue_size=32)
    model.variogram.set_fit(FIT)
    model.compile(
        optimizer="adam",
        loss=gv.losses.SemivariogramContrastiveLoss(false_negative_weight=0.0),
    )
    hist = model.fit(x, gps, batch_size=32, epochs=2, verbose=0).history
    assert np.all(np.isfinite(hist["loss"]))
    assert all(
        np.all(np.isfinite(to_numpy(w))) for w in model.trainable_weights
    )


def test_config_round_trip():
    loss = gv.losses.SemivariogramContrastiveLoss(
        mode="near_scaling",
        false_negative_weight=0.5,
        hard_negative_beta=1.0,
        hard_negative_margin=0.01,
        max_weight=4.0,
        false_negative_range_km=300.0,
        use_hard_negatives=False,
        hard_negative_range_km=600.0,
    )
    run_loss_test(loss, TARGETS, _y_pred(), fit_model=small_geoclip)
    weighted = gv.losses.SemivariogramContrastiveLoss()
    run_loss_test(weighted, TARGETS, _y_pred(), fit_model=small_geoclip)
    # The base class of pair-statistics losses is abstract.
    with pytest.raises(TypeError, match="classify_negatives"):
        gv.losses.PairStatisticsLoss()
    with pytest.raises(ValueError, match="false_negative_weight"):
        gv.losses.SemivariogramContrastiveLoss(false_negative_weight=1.5)
    with pytest.raises(ValueError, match="mode"):
        gv.losses.SemivariogramContrastiveLoss(mode="soft")
    for arg in ("false_negative_range_km", "hard_negative_range_km"):
        with pytest.raises(ValueError, match=f"`{arg}` must be None or >= 0"):
            gv.losses.SemivariogramContrastiveLoss(**{arg: -1.0})


def test_callback_updates_state_in_compiled_fit_and_logs(tmp_path):
    gps = random_gps(512, seed=0, max_lat=70.0)
    x = toy_features(gps)
    model = small_geoclip(queue_size=128)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=gv.losses.SemivariogramContrastiveLoss(),
        jit_compile=backend() != "torch",
    )
    plot = tmp_path / "variogram.png"
    cb = gv.callbacks.SemivariogramCallback(plot_path=str(plot))
    assert not model.variogram.active
    hist = model.fit(
        x, gps, batch_size=128, epochs=3, verbose=0, callbacks=[cb]
    ).history
    # Epoch 1 ran unweighted (no fit yet); the fit assigned at its end was
    # used inside the compiled step of epoch 2: negatives got classified.
    assert hist["false_negative_frac"][0] == 0.0
    assert hist["false_negative_frac"][1] + hist["hard_negative_frac"][1] > 0.0
    for key in (
        "variogram_sill",
        "variogram_range_km",
        "variogram_nugget",
        "variogram_converged",
    ):
        assert len(hist[key]) == 3
    assert hist["variogram_converged"][-1] == 1.0
    assert model.variogram.active
    assert plot.exists() and plot.stat().st_size > 10_000
    # The callback's last fit is what the model's state holds.
    np.testing.assert_allclose(
        to_numpy(model.variogram.params), cb.last_fit.packed(), rtol=1e-6
    )


def test_refit_every_uses_all_pairs_since_the_last_fit():
    # 512 points, batches of 128, a 128-slot queue, refit every 2 epochs:
    # fits after epochs 1 and 3. Negative pairs per step are
    # 128 x (128 + valid queue slots) - 128 positives; the queue is full
    # from the second step on. The second fit must see epochs 2 and 3,
    # 8 full steps: 8 x (128 x 256 - 128) pairs (none beyond the last bin).
    gps = random_gps(512, seed=2, max_lat=70.0)
    model = small_geoclip(queue_size=128)
    model.compile(
        optimizer="adam", loss=gv.losses.SemivariogramContrastiveLoss()
    )
    cb = gv.callbacks.SemivariogramCallback(refit_every=2)
    model.fit(
        toy_features(gps),
        gps,
        batch_size=128,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[cb],
    )
    assert [epoch for epoch, _ in cb.fits] == [0, 2]
    assert cb.last_empirical.count.sum() == 8 * (128 * 256 - 128)


def test_callback_with_data_fits_before_the_first_epoch():
    gps = random_gps(256, seed=1, max_lat=70.0)
    x = toy_features(gps)
    model = small_geoclip(queue_size=64)
    model.compile(
        optimizer="adam", loss=gv.losses.SemivariogramContrastiveLoss()
    )
    cb = gv.callbacks.SemivariogramCallback(data=(x, gps), sample_size=200)
    hist = model.fit(
        x, gps, batch_size=64, epochs=1, verbose=0, callbacks=[cb]
    ).history
    assert cb.fits[0][0] == -1
    assert hist["false_negative_frac"][0] + hist["hard_negative_frac"][0] > 0.0


def test_callback_requires_the_semivariogram_loss():
    gps = random_gps(64)
    model = small_geoclip()
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    with pytest.raises(ValueError, match="SemivariogramContrastiveLoss"):
        model.fit(
            toy_features(gps),
            gps,
            epochs=1,
            verbose=0,
            callbacks=[gv.callbacks.SemivariogramCallback()],
        )
    with pytest.raises(ValueError, match="refit_every"):
        gv.callbacks.SemivariogramCallback(refit_every=0)


def test_variogram_state_survives_save_and_load(tmp_path):
    model = small_geoclip(
        queue_size=16, variogram_bins_km=[0, 100, 1000, 20100]
    )
    model.variogram.set_fit(FIT)
    model(np.zeros((1, 16), "float32"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.variogram.bin_edges_km == [0.0, 100.0, 1000.0, 20100.0]
    np.testing.assert_allclose(to_numpy(loaded.variogram.params), FIT.packed())
    assert loaded.variogram.active
    assert models.PARAM_NAMES[6] == "active"


def _resume_setup():
    gps = random_gps(192, seed=3, max_lat=70.0)
    return toy_features(gps, seed=3), gps


def _fresh_model():
    keras.utils.set_random_seed(0)
    model = small_geoclip(queue_size=64, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=gv.losses.SemivariogramContrastiveLoss(),
    )
    return model


def _fit(model, x, gps, callbacks, **kwargs):
    # Callbacks run in list order; the variogram goes last unless listed.
    if not any(
        isinstance(c, gv.callbacks.SemivariogramCallback) for c in callbacks
    ):
        callbacks = callbacks + [gv.callbacks.SemivariogramCallback()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # early fallbacks
        return model.fit(
            x,
            gps,
            batch_size=32,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
            **kwargs,
        ).history["loss"]


@pytest.mark.parametrize("weights_only", [False, True])
@pytest.mark.parametrize("checkpoint_first", [True, False])
def test_resume_from_model_checkpoint_continues_exactly(
    tmp_path, weights_only, checkpoint_first
):
    x, gps = _resume_setup()
    reference = _fit(_fresh_model(), x, gps, [], epochs=3)
    path = str(tmp_path / ("m.weights.h5" if weights_only else "m.keras"))
    checkpoint = keras.callbacks.ModelCheckpoint(
        path, save_weights_only=weights_only
    )
    model = _fresh_model()
    # The user's order: the checkpoint before (or after) the variogram.
    cbs = [checkpoint, gv.callbacks.SemivariogramCallback()]
    first = _fit(
        model, x, gps, cbs if checkpoint_first else cbs[::-1], epochs=2
    )
    np.testing.assert_allclose(first, reference[:2], rtol=1e-5)
    if weights_only:
        resumed = _fresh_model()
        resumed(x[:1])
        resumed.optimizer.build(resumed.trainable_variables)
        resumed.load_weights(path)
    else:
        resumed = keras.models.load_model(path)
    assert resumed.variogram.active
    rest = _fit(resumed, x, gps, [], epochs=3, initial_epoch=2)
    np.testing.assert_allclose(rest[0], reference[2], atol=1e-4)


def test_resume_from_backup_and_restore_continues_exactly(tmp_path):
    x, gps = _resume_setup()
    reference = _fit(_fresh_model(), x, gps, [], epochs=3)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    model = _fresh_model()
    model(x[:1])  # Keras's BackupAndRestore needs a built model on TF
    with pytest.raises(KeyboardInterrupt):
        _fit(
            model,
            x,
            gps,
            [keras.callbacks.BackupAndRestore(backup), Interrupt()],
            epochs=3,
        )
    resumed = _fresh_model()
    resumed(x[:1])  # BackupAndRestore restores into a built model
    rest = _fit(
        resumed, x, gps, [keras.callbacks.BackupAndRestore(backup)], epochs=3
    )
    assert len(rest) == 1
    np.testing.assert_allclose(rest[0], reference[2], atol=1e-4)


def test_train_begin_keeps_the_statistics_a_checkpoint_restored(tmp_path):
    # refit_every=2: after epoch 2 the statistics hold that epoch's pairs
    # for the next fit; a resumed fit must not discard them.
    x, gps = _resume_setup()
    model = _fresh_model()
    callback = gv.callbacks.SemivariogramCallback(refit_every=2)
    _fit(model, x, gps, [callback], epochs=2)
    count = model.variogram.statistics()[0].sum()
    assert count > 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    resumed = gv.callbacks.SemivariogramCallback(refit_every=2)
    resumed.set_model(loaded)
    resumed.on_train_begin()
    assert loaded.variogram.statistics()[0].sum() == count


@pytest.mark.parametrize("signal", [False, True])
def test_callback_falls_back_on_features_without_spatial_signal(signal):
    # Random features (the README snippet's kind) carry no spatial signal:
    # every fit must fall back and nothing be re-weighted. Features that
    # vary smoothly with location must still be fitted.
    gps = random_gps(512, seed=1, max_lat=70.0)
    noise = np.random.default_rng(0).normal(size=(512, 32)).astype("float32")
    x = toy_features(gps, dim=32) if signal else noise
    keras.utils.set_random_seed(0)
    model = small_geoclip(queue_size=256)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=gv.losses.SemivariogramContrastiveLoss(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hist = model.fit(
            x,
            gps,
            batch_size=128,
            epochs=3,
            verbose=0,
            callbacks=[gv.callbacks.SemivariogramCallback()],
        ).history
    if signal:
        assert hist["variogram_converged"] == [1.0, 1.0, 1.0]
    else:
        assert hist["variogram_converged"] == [0.0, 0.0, 0.0]
        assert hist["hard_negative_frac"] == [0.0, 0.0, 0.0]
        assert hist["false_negative_frac"] == [0.0, 0.0, 0.0]


def test_statistics_leave_out_pairs_at_identical_coordinates():
    # Row 0's own earlier copy sits in the queue (candidate 3): same
    # coordinates, dissimilarity 0. It must not enter the statistics.
    state = gv.semivariogram.SemivariogramState([0.0, 1000.0, 20100.0])
    gps = np.array([[0.0, 0.0], [0.0, 5.0], [0.0, 50.0]], "float32")
    candidates = np.concatenate([gps, gps[:1]])
    y_pred = {
        "logits": np.zeros((3, 4), "float32"),
        "candidate_mask": np.ones(4, bool),
        "candidate_gps": candidates,
        "distance_km": to_numpy(gv.geo.pairwise_haversine_km(gps, candidates)),
        "dissimilarity": np.full((3, 4), 0.5, "float32"),
        "variogram": FIT.packed(),
    }
    _, negatives = gv.candidates.positives_and_negatives(
        np.arange(3), y_pred["logits"], y_pred["candidate_mask"]
    )
    classes = gv.losses.SemivariogramContrastiveLoss().classify_negatives(
        y_pred
    )
    state.update(y_pred, negatives, classes)
    count, mean, _ = state.statistics()
    # Negatives: 3 x 4 - 3 positives = 9; minus row 0's copy = 8 pairs.
    assert count.sum() == 8.0
    np.testing.assert_allclose(mean, [0.5, 0.5])


def test_fit_falls_back_on_a_range_beyond_the_data_and_on_nan_bins():
    h = np.linspace(100.0, 5000.0, 30)
    rising = 1e-4 * h  # never levels off within the data
    fit = gv.semivariogram.fit_variogram(
        h, rising, np.full(30, 50.0), family="spherical", warn=False
    )
    assert not fit.converged and "beyond the largest distance" in fit.message
    gamma = 0.8 * (1 - np.exp(-h / 700.0))
    gamma[5] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        fit = gv.semivariogram.fit_variogram(h, gamma, np.full(30, 50.0))
    assert not fit.converged


def test_callback_order_also_applies_to_positional_and_callback_lists(tmp_path):
    # `fit(x, y, batch_size, epochs, verbose, callbacks)` positionally, and
    # a `keras.callbacks.CallbackList`: the variogram callback still runs
    # first, so the checkpoint holds the epoch's fit.
    x, gps = _resume_setup()
    for as_list in (False, True):
        model = _fresh_model()
        path = str(tmp_path / f"m{int(as_list)}.keras")
        cbs = [
            keras.callbacks.ModelCheckpoint(path),
            gv.callbacks.SemivariogramCallback(),
        ]
        if as_list:
            cbs = keras.callbacks.CallbackList(
                cbs, add_history=True, model=model
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model.fit(x, gps, 32, 1, 0, cbs, shuffle=False)
        saved = keras.models.load_model(path).variogram.params
        np.testing.assert_array_equal(
            to_numpy(saved), to_numpy(model.variogram.params)
        )
        assert model.variogram.active
