"""The candidate scores `GeoCLIP` hands its loss: keys, masks, unpacking.

In a training step each batch image is scored against `C` candidate
locations: the batch's own coordinates followed by the GPS queue. The
model passes the loss a dict (`y_pred`) with these entries:

- `LOGITS` `(B, C)`: the image-to-location logits;
- `CANDIDATE_MASK` `(C,)`: False for empty queue slots;
- `CANDIDATE_GPS` `(C, 2)`: the candidates' clean coordinates;

and, for a `gv.losses.PairStatisticsLoss`, the `PAIR_KEYS`:

- `DISTANCE_KM` `(B, C)`: great-circle distance of each pair;
- `DISSIMILARITY` `(B, C)`: `1 - cos` of their stop-gradient embeddings;
- `VARIOGRAM` `(NUM_PARAMS,)`: the fitted variogram, packed;
- `QUEUE_FULL`: 1.0 once the queue has been filled, else 0.0;

and, optionally, `EXPECTED` `(B, C)`: the fitted variogram at each pair's
distance, so that the loss and the model's statistics evaluate it once.

The loss's `y_true` is the column of each row's positive (for GeoCLIP,
row `i`'s own coordinates: column `i`).
"""

from keras import ops

LOGITS = "logits"
CANDIDATE_MASK = "candidate_mask"
CANDIDATE_GPS = "candidate_gps"
DISTANCE_KM = "distance_km"
DISSIMILARITY = "dissimilarity"
VARIOGRAM = "variogram"
QUEUE_FULL = "queue_full"
EXPECTED = "expected_dissimilarity"
# The entries a `PairStatisticsLoss` receives besides the logits and mask.
PAIR_KEYS = (DISTANCE_KM, DISSIMILARITY, VARIOGRAM, QUEUE_FULL)

# The logit of a candidate left out of a softmax: exp() of it is 0 in
# float32, and it stays finite (no inf - inf).
MASKED_LOGIT = -1e9

__all__ = [
    "CANDIDATE_GPS",
    "CANDIDATE_MASK",
    "DISSIMILARITY",
    "DISTANCE_KM",
    "EXPECTED",
    "LOGITS",
    "MASKED_LOGIT",
    "PAIR_KEYS",
    "QUEUE_FULL",
    "VARIOGRAM",
    "positives_and_negatives",
    "retrieved_gps",
    "unpack_candidates",
]


def unpack_candidates(y_pred):
    """`(logits (B, C) float32, candidate_mask bool or None)` of `y_pred`.

    Args:
        y_pred: logits `(B, C)`, or a dict with `LOGITS` and optionally
            `CANDIDATE_MASK`.

    Example:

    >>> logits, mask = unpack_candidates({"logits": np.zeros((2, 3))})
    >>> tuple(logits.shape), mask is None
    ((2, 3), True)
    """
    if isinstance(y_pred, dict):
        if LOGITS not in y_pred:
            raise ValueError(
                "`y_pred` must be a logits tensor (B, C) or a dict with a "
                f"'{LOGITS}' entry; got keys {sorted(y_pred)}."
            )
        logits = y_pred[LOGITS]
        mask = y_pred.get(CANDIDATE_MASK)
    else:
        logits, mask = y_pred, None
    logits = ops.cast(logits, "float32")
    if len(logits.shape) != 2:
        raise ValueError(
            f"`logits` must have rank 2 (batch, candidates); got shape "
            f"{tuple(logits.shape)}."
        )
    if mask is not None:
        mask = ops.cast(mask, "bool")
    return logits, mask


def positives_and_negatives(y_true, logits, mask):
    """One-hot positives `(B, C)` float and the negative mask (bool):
    real candidates (per `mask`) other than the row's positive.

    Example:

    >>> pos, neg = positives_and_negatives(
    ...     np.array([1]), np.zeros((1, 3)), np.array([True, True, False]))
    >>> keras.ops.convert_to_numpy(neg).tolist()
    [[True, False, False]]
    """
    # A comparison with the column numbers, not `one_hot`: a few operators
    # rather than ~15 in eager PyTorch; a column outside [0, C) marks none.
    column = ops.cast(ops.reshape(y_true, (-1, 1)), "int32")
    is_positive = column == ops.arange(ops.shape(logits)[-1], dtype="int32")
    negatives = ops.logical_not(is_positive)
    if mask is not None:
        negatives = ops.logical_and(negatives, mask)  # (C,) or (B, C)
    return ops.cast(is_positive, "float32"), negatives


def retrieved_gps(logits, candidate_mask, candidate_gps):
    """Coordinates of each row's best-scoring real candidate (in-graph).

    Args:
        logits: `(B, C)` scores of images against candidate locations.
        candidate_mask: bool `(C,)`: False for empty candidate slots.
        candidate_gps: `(C, 2)` candidate coordinates.

    Returns:
        `(B, 2)` coordinates.
    """
    logits = ops.where(candidate_mask, ops.stop_gradient(logits), MASKED_LOGIT)
    return ops.take(candidate_gps, ops.argmax(logits, axis=-1), axis=0)
