import keras
import numpy as np
import pytest

import geovario_keras as gv
from tests.testing import run_loss_test
from tests.testing import small_geoclip
from tests.testing import to_numpy

LOGITS = np.array(
    [
        [2.0, 0.5, -1.0, 0.3, 1.1],
        [0.1, 1.5, 0.2, -0.4, 2.2],
        [1.0, 1.0, 3.0, 0.0, -2.0],
    ],
    "float32",
)


def _hand_ce(logits, targets, mask=None):
    logits = logits.astype("float64")
    out = []
    for i, t in enumerate(targets):
        cols = [
            j
            for j in range(logits.shape[1])
            if mask is None or mask[j] or j == t
        ]
        out.append(np.log(np.sum(np.exp(logits[i, cols]))) - logits[i, t])
    return np.array(out)


def test_equals_hand_cross_entropy_3x5():
    loss = gv.losses.GeoContrastiveLoss(reduction=None)
    targets = np.array([0, 1, 2])
    got = to_numpy(loss(targets, LOGITS))
    np.testing.assert_allclose(got, _hand_ce(LOGITS, targets), rtol=1e-6)


def test_equals_keras_sparse_categorical_crossentropy():
    targets = np.array([0, 1, 2])
    ref = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(
        to_numpy(gv.losses.GeoContrastiveLoss()(targets, LOGITS)),
        to_numpy(ref(targets, LOGITS)),
        rtol=1e-6,
    )


def test_masked_candidates_are_left_out():
    targets = np.array([0, 1, 2])
    mask = np.array([True, True, True, False, True])
    loss = gv.losses.GeoContrastiveLoss(reduction=None)
    got = to_numpy(loss(targets, {"logits": LOGITS, "candidate_mask": mask}))
    np.testing.assert_allclose(got, _hand_ce(LOGITS, targets, mask), rtol=1e-6)
    # Huge logits at a masked column change nothing.
    big = LOGITS.copy()
    big[:, 3] = 1e4
    got_big = to_numpy(loss(targets, {"logits": big, "candidate_mask": mask}))
    np.testing.assert_allclose(got_big, got, rtol=1e-6)


def test_positive_is_never_masked():
    targets = np.array([0, 1, 2])
    mask = np.array([False, False, False, True, True])
    loss = gv.losses.GeoContrastiveLoss(reduction=None)
    got = to_numpy(loss(targets, {"logits": LOGITS, "candidate_mask": mask}))
    np.testing.assert_allclose(got, _hand_ce(LOGITS, targets, mask), rtol=1e-6)


def test_positives_and_negatives_per_row_mask_and_columns():
    # Row i's positive is column y_true[i]; its negatives are the real
    # candidates (per a (C,) or (B, C) mask) other than that column; a
    # column outside [0, C) marks no positive.
    logits = np.zeros((3, 4), "float32")
    row_mask = np.array([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]], bool)
    for mask in (None, row_mask[1], row_mask):
        positive, negative = gv.candidates.positives_and_negatives(
            np.array([2, 0, -1]), logits, mask
        )
        want_pos = np.zeros((3, 4))
        want_pos[0, 2] = want_pos[1, 0] = 1.0
        real = (
            np.ones((3, 4), bool)
            if mask is None
            else np.broadcast_to(mask, (3, 4))
        )
        np.testing.assert_array_equal(to_numpy(positive), want_pos)
        assert to_numpy(positive).dtype == np.float32
        np.testing.assert_array_equal(
            to_numpy(negative), real & (want_pos == 0)
        )


def test_sample_weight_and_config():
    loss = gv.losses.GeoContrastiveLoss()
    targets = np.array([0, 1, 2])
    w = np.array([1.0, 0.0, 2.0], "float32")
    expected = np.sum(_hand_ce(LOGITS, targets) * w) / 3.0
    np.testing.assert_allclose(
        to_numpy(loss(targets, LOGITS, sample_weight=w)), expected, rtol=1e-6
    )
    run_loss_test(
        loss,
        targets,
        LOGITS,
        expected=_hand_ce(LOGITS, targets).mean(),
        fit_model=small_geoclip,
    )


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="rank 2"):
        gv.losses.GeoContrastiveLoss()(np.array([0]), np.zeros((5,), "float32"))


# ------------------------------------------- Robinson et al. hard negatives
def _robinson_reference(logits, positive, negatives, beta, tau_plus, floor):
    """Robinson et al. (ICLR 2021) HCL loss as in the authors' code.

    pos = exp(s_pos); neg = exp(s_neg); imp = exp(beta * log(neg));
    reweight_neg = sum(imp * neg) / mean(imp);
    Ng = (-tau_plus * N * pos + reweight_neg) / (1 - tau_plus), clamped
    below at N * exp(-floor); loss = -log(pos / (pos + Ng)).
    """
    out = []
    for row, p, neg_mask in zip(logits, positive, negatives):
        pos = np.exp(row[p])
        neg = np.exp(row[neg_mask])
        imp = np.exp(beta * np.log(neg))
        reweight = (imp * neg).sum() / imp.mean()
        n = neg_mask.sum()
        ng = (-tau_plus * n * pos + reweight) / (1 - tau_plus)
        ng = max(ng, n * np.exp(-floor))
        out.append(-np.log(pos / (pos + ng)))
    return np.array(out)


@pytest.mark.parametrize("tau_plus", [0.0, 0.1])
def test_robinson_hard_negative_loss_matches_reference(tau_plus):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5)).astype("float32") * 2.0
    mask = np.array([True, True, True, True, False])
    negatives = np.ones((3, 5), bool)
    negatives[np.arange(3), np.arange(3)] = False
    negatives &= mask
    loss = gv.losses.HardNegativeContrastiveLoss(
        beta=1.0, tau_plus=tau_plus, max_logit=1.0, reduction=None
    )
    ours = to_numpy(
        loss(np.arange(3), {"logits": logits, "candidate_mask": mask})
    )
    ref = _robinson_reference(
        logits.astype(np.float64), np.arange(3), negatives, 1.0, tau_plus, 1.0
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_robinson_beta_zero_is_plain_loss_and_config():
    logits = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    y = np.arange(4)
    plain = gv.losses.GeoContrastiveLoss()(y, logits)
    hard = gv.losses.HardNegativeContrastiveLoss(beta=0.0)(y, logits)
    np.testing.assert_allclose(to_numpy(hard), to_numpy(plain), rtol=1e-6)
    loss = gv.losses.HardNegativeContrastiveLoss(beta=0.5, tau_plus=0.1)
    run_loss_test(loss, y, logits, fit_model=small_geoclip)
    with pytest.raises(ValueError, match="tau_plus"):
        gv.losses.HardNegativeContrastiveLoss(tau_plus=1.0)
    with pytest.raises(ValueError, match="beta"):
        gv.losses.HardNegativeContrastiveLoss(beta=-1.0)


def test_robinson_debiased_loss_is_finite_at_high_temperature():
    # Logits at CLIP's largest temperature (100) reach +-100: the debiased
    # denominator must not overflow float32 (it did at temperatures >= 80).
    rng = np.random.default_rng(2)
    cos = rng.uniform(-1, 1, size=(4, 6))
    logits = (100.0 * cos).astype("float32")
    negatives = ~np.eye(4, 6, dtype=bool)
    loss = gv.losses.HardNegativeContrastiveLoss(
        beta=1.0, tau_plus=0.1, max_logit=100.0, reduction=None
    )
    ours = to_numpy(loss(np.arange(4), logits))
    ref = _robinson_reference(
        logits.astype(np.float64), np.arange(4), negatives, 1.0, 0.1, 100.0
    )
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
