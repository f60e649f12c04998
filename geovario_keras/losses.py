"""Contrastive losses for image-to-GPS retrieval."""

import keras
from keras import ops

from geovario_keras.api_export import register

_MASKED_LOGIT = -1e9


def unpack_candidates(y_pred):
    """Returns `(logits (B, C) float32, candidate_mask bool or None)`."""
    if isinstance(y_pred, dict):
        if "logits" not in y_pred:
            raise ValueError(
                "`y_pred` must be a logits tensor (B, C) or a dict with a "
                f"'logits' entry; got keys {sorted(y_pred)}."
            )
        logits = y_pred["logits"]
        mask = y_pred.get("candidate_mask")
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


@register
class GeoContrastiveLoss(keras.losses.Loss):
    """GeoCLIP's image-to-GPS InfoNCE loss over `[batch GPS ; queue GPS]`.

    Row `i` of the logits holds the scores of image `i` against every
    candidate location; its positive is column `y_true[i]` (for GeoCLIP, the
    image's own GPS: column `i`). The loss per row is the cross-entropy
    `logsumexp_j(logits_ij) - logits_i,y_i`, where candidates whose
    `candidate_mask` is False (empty queue slots) are left out of the sum.
    This is image-to-GPS only, as in the reference implementation.

    `GeoCLIP.compute_loss` builds the inputs; the loss can also be used on
    its own.

    Args:
        reduction: Keras reduction (default `"sum_over_batch_size"`).
        name: str.
        dtype: loss dtype (default float32).

    Call arguments:
        y_true: int tensor `(B,)`: the column of each row's positive.
        y_pred: logits `(B, C)`, or a dict with `"logits"` `(B, C)` and
            optionally `"candidate_mask"` `(C,)` or `(B, C)` (True = real
            candidate). Extra entries are ignored by this loss.

    Example:

    >>> loss = GeoContrastiveLoss()
    >>> loss(np.array([0, 1]), np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]))
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="geo_contrastive_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    # Subclasses that need pair distances / dissimilarities set this; the
    # model then adds "distance_km" and "dissimilarity" to `y_pred`.
    needs_pair_statistics = False

    def negative_log_weights(self, y_pred, positive):
        """Additive term for the logits of negatives; None means none.

        Args:
            y_pred: the dict given to the loss.
            positive: float `(B, C)` one-hot of each row's positive.
        """
        return None

    def call(self, y_true, y_pred):
        logits, mask = unpack_candidates(y_pred)
        num_candidates = ops.shape(logits)[-1]
        positive = ops.one_hot(
            ops.cast(ops.reshape(y_true, (-1,)), "int32"),
            num_candidates,
            dtype="float32",
        )
        extra = self.negative_log_weights(y_pred, positive)
        if extra is not None:
            # `where`, not a product: a log-weight of -inf must never meet
            # the positive's column (0 * inf is NaN).
            logits = ops.where(
                positive > 0, logits, logits + ops.cast(extra, "float32")
            )
        if mask is not None:
            valid = ops.logical_or(mask, positive > 0)
            logits = ops.where(valid, logits, _MASKED_LOGIT)
        positive_logit = ops.sum(logits * positive, axis=-1)
        return ops.logsumexp(logits, axis=-1) - positive_logit

    def get_config(self):
        return super().get_config()
