import keras
import numpy as np
import pytest

import geovario_keras as gv
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


def test_sample_weight_and_config():
    loss = gv.losses.GeoContrastiveLoss()
    targets = np.array([0, 1, 2])
    w = np.array([1.0, 0.0, 2.0], "float32")
    expected = np.sum(_hand_ce(LOGITS, targets) * w) / 3.0
    np.testing.assert_allclose(
        to_numpy(loss(targets, LOGITS, sample_weight=w)), expected, rtol=1e-6
    )
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(revived, gv.losses.GeoContrastiveLoss)
    assert revived.get_config() == loss.get_config()


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="rank 2"):
        gv.losses.GeoContrastiveLoss()(np.array([0]), np.zeros((5,), "float32"))
