"""Reference sets and evaluation streamed from stored features.

For data sets of millions of rows (a `geotagged_features` builder):
`set_reference_from_features` encodes a split block by block into the
model's reference set (memory: the reference embeddings themselves, which
are model state, plus one block), and `evaluate_features` predicts a split
block by block in any retrieval mode and scores it with
`gv.metrics.geolocation_report` (memory: one block of features and the
predicted coordinates). Both print progress with rows/s and an ETA.
"""

import numpy as np

from geovario_keras import geo
from geovario_keras import metrics
from geovario_keras.data.corpus_reader import LABELS
from geovario_keras.layers.gps_gallery import check_dtype
from geovario_keras.utils import RowProgress
from geovario_keras.utils import bound_heap_growth
from geovario_keras.utils import check_int
from geovario_keras.validation import check_feature_size


def _blocks(builder, split, block_size):
    """Numpy dicts of `block_size` rows of `split`, in stored order."""
    import tensorflow_datasets as tfds

    check_int("block_size", block_size)
    bound_heap_growth()
    ds = builder.as_dataset(split=split, shuffle_files=False)
    for block in tfds.as_numpy(ds.batch(block_size)):
        yield block


def set_reference_from_features(
    model, builder, split="train", block_size=16384, verbose=1, dtype=None
):
    """Encodes a stored-features split as the model's reference set.

    Args:
        model: a `GeoCLIP` whose image encoder takes the stored features.
        builder: a built `gv.data.geotagged_features` builder.
        split: the split (typically the training split).
        block_size: int >= 1. Rows read and encoded per block.
        verbose: 0 or 1. Progress lines.
        dtype: None (keep the model's `reference_dtype`), `"float32"`,
            `"float16"` or `"bfloat16"`: the embeddings' storage (float16:
            half the memory, held so while the split is read).

    Returns:
        The number of reference rows.
    """
    check_feature_size(model, builder)
    total = builder.info.splits[split].num_examples
    dim = model.image_encoder.embed_dim
    # Held in the storage dtype (float16 halves it; numpy has no bfloat16).
    dtype = check_dtype(dtype or model.reference.embeddings_dtype)
    held = "float16" if dtype == "float16" else "float32"
    emb = np.empty((total, dim), held)
    gps = np.empty((total, 2), "float32")
    rate, at = RowProgress(f"reference {split}", total, verbose=verbose), 0
    for block in _blocks(builder, split, block_size):
        n = len(block["gps"])
        emb[at : at + n] = model.encode_image(
            block["features"].astype("float32"), batch_size=min(n, 4096)
        )
        gps[at : at + n] = block["gps"]
        at += n
        rate.update(n)
    if at != total:
        raise ValueError(
            f"Split {split!r} yielded {at} rows, its info says {total}: the "
            "data set is damaged; rebuild it."
        )
    model.reference.set(
        geo.check_gps(gps, name="gps"), emb, copy=False, embeddings_dtype=dtype
    )
    return total


def evaluate_features(
    model,
    builder,
    split="test",
    mode="gallery",
    block_size=8192,
    admin_levels=True,
    verbose=1,
    **options,
):
    """`gv.metrics.geolocation_report` of the top-1 predictions of a split.

    Args:
        model: a `GeoCLIP` over the stored features, with its gallery set
            (and its reference for `"reference"` / `"hybrid"`).
        builder: a built `gv.data.geotagged_features` builder.
        split: the split to score.
        mode: `"gallery"`, `"reference"` or `"hybrid"` (`predict_gps`).
        block_size: int >= 1. Queries per block.
        admin_levels: bool. Also score country / region / sub-region /
            city against the stored labels (rows without one are left out
            of that level).
        verbose: 0 or 1. Progress lines with queries/s and ETA.
        **options: `gv.retrieval.RetrievalOptions` fields.

    Returns:
        `(report, predictions (N, 2))`.
    """
    check_feature_size(model, builder)
    total = builder.info.splits[split].num_examples
    pred = np.empty((total, 2), "float32")
    true = np.empty((total, 2), "float32")
    labels = {k: [] for k in LABELS}
    rate, at = (
        RowProgress(f"evaluate {split} ({mode})", total, verbose=verbose),
        0,
    )
    for block in _blocks(builder, split, block_size):
        n = len(block["gps"])
        coords, _ = model.predict_gps(
            block["features"].astype("float32"),
            top_k=1,
            mode=mode,
            batch_size=min(n, 4096),
            **options,
        )
        pred[at : at + n] = coords[:, 0]
        true[at : at + n] = block["gps"]
        for k in LABELS:
            labels[k].extend(v.decode("utf-8") for v in block[k])
        at += n
        rate.update(n)
    report = metrics.geolocation_report(
        pred,
        true,
        admin_levels=admin_levels,
        true_labels={k: np.array(v) for k, v in labels.items()}
        if admin_levels
        else None,
    )
    return report, pred
