"""What the tensorflow-datasets builders share: the admin labels and the
features of an example, the build with progress, and a split as arrays."""

import time

import numpy as np
import tensorflow_datasets as tfds

from geovario_keras.data.corpus_reader import LABELS


def features(image_shape):
    """An example: the image, its (latitude, longitude) and its labels."""
    feats = {
        "image": tfds.features.Image(shape=image_shape),
        "gps": tfds.features.Tensor(shape=(2,), dtype=np.float32),
    }
    feats.update({k: tfds.features.Text() for k in LABELS})
    return tfds.features.FeaturesDict(feats)


def prepare(builder, download_config=None, verbose=True):
    """`download_and_prepare` (a no-op when built) reporting time and size."""
    if builder.is_prepared():
        return builder
    start = time.time()
    builder.download_and_prepare(download_config=download_config)
    if verbose:
        print(
            f"Built {builder.name}/{builder.builder_config.name} in "
            f"{time.time() - start:.1f} s: {builder.info.dataset_size} in "
            f"{builder.data_dir}"
        )
        meta = dict(builder.info.metadata or {})
        if meta:
            print(f"  {meta}")
    return builder


def as_arrays(builder, split):
    """One split as a dict of numpy arrays (labels as `str`)."""
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    out = {}
    for key, value in data.items():
        if value.dtype == object:
            value = np.array([v.decode("utf-8") for v in value])
        out[key] = value
    return out
