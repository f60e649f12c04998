"""GeoCLIP's InfoNCE loss over `[batch GPS ; queue GPS]`: the base loss."""

import keras
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.candidates import MASKED_LOGIT
from geovario_keras.candidates import positives_and_negatives
from geovario_keras.candidates import unpack_candidates


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
    >>> value = loss(np.array([0]), np.array([[2.0, 0.0, 0.0]]))
    >>> round(float(value), 4)  # log(e^2 + 2) - 2
    0.2395
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="geo_contrastive_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def adjust_negative_logits(self, logits, y_pred, negative_mask=None):
        """Logits to use for negatives; the positives keep theirs.

        The base loss changes nothing. Subclasses re-weight negatives here,
        e.g. `logits + log(w)` to weight a negative's term in the softmax
        denominator by `w`. `negative_mask` `(B, C)` is True for real
        candidates other than the row's positive.
        """
        return logits

    # The masks of the rows' positives and real negatives (a staticmethod
    # here for subclasses and callers holding the loss).
    positives_and_negatives = staticmethod(positives_and_negatives)

    def call(self, y_true, y_pred):
        logits, mask = unpack_candidates(y_pred)
        positive, negatives = self.positives_and_negatives(y_true, logits, mask)
        adjusted = self.adjust_negative_logits(logits, y_pred, negatives)
        if adjusted is not logits:
            # `where`, not arithmetic with the one-hot: the positives keep
            # their logits exactly, and no 0 * inf can appear.
            logits = ops.where(positive > 0, logits, adjusted)
        if mask is not None:
            valid = ops.logical_or(mask, positive > 0)
            logits = ops.where(valid, logits, MASKED_LOGIT)
        positive_logit = ops.sum(logits * positive, axis=-1)
        return ops.logsumexp(logits, axis=-1) - positive_logit
