"""Streamed input from stored features: bounded memory, exact resumption.

A `geotagged_features` data set (millions of rows) is read from disk as a
`tf.data` pipeline, which Keras feeds to `model.fit` on every backend
(TensorFlow natively, JAX and PyTorch through its data adapter). Memory
is bounded by the shuffle buffer and a few batches, whatever the data size
(with `gv.utils.bound_heap_growth`, which keeps the allocator from growing
the heap with the rows read).

The order is a pure function of `(seed, epoch)`: epoch `e` reads the
files in an order drawn from `seed` and `e` and shuffles rows within a
buffer of `shuffle_buffer` rows seeded the same way, and every epoch has
`steps_per_epoch = num_examples // batch_size` full batches (the last
partial batch is left out; the rows left out differ from epoch to epoch).
So a stream can start at any global step and continue exactly where a
killed run stopped (`gv.training.fit_resumable`).
"""

import os

from geovario_keras.utils import bound_heap_growth
from geovario_keras.utils import check_int


def _tf():
    import tensorflow as tf

    return tf


def steps_per_epoch(builder, split, batch_size):
    """Full batches of `batch_size` per epoch of `split`."""
    check_int("batch_size", batch_size)
    rows = builder.info.splits[split].num_examples
    if rows < batch_size:
        raise ValueError(
            f"`batch_size` must be at most the {rows} rows of split "
            f"{split!r}; got {batch_size}."
        )
    return rows // batch_size


def epoch_stream(
    builder,
    split,
    batch_size,
    epoch=0,
    seed=0,
    shuffle_buffer=16384,
    steps=None,
):
    """One epoch of `(features float32, gps)` batches, in the order of
    `(seed, epoch)`.

    Args:
        builder: a built `geotagged_features` builder.
        split: its split, e.g. `"train"`.
        batch_size: int >= 1.
        epoch: int >= 0. Epochs of the same seed are shuffled differently.
        seed: int. Seed of the file order and of the row shuffle.
        shuffle_buffer: int >= 0. Rows in the shuffle buffer (0: files and
            rows in stored order, e.g. for evaluation). tfds stored the rows
            in a random order already, so a buffer of a few thousand rows
            mixes the whole corpus from epoch to epoch.
        steps: int or None. Batches of the epoch (default and at most
            `steps_per_epoch(...)`).

    Returns:
        A `tf.data.Dataset` of `steps` batches.
    """
    tf = _tf()
    bound_heap_growth()
    check_int("epoch", epoch, 0)
    check_int("shuffle_buffer", shuffle_buffer, 0)
    full = steps_per_epoch(builder, split, batch_size)
    steps = full if steps is None else min(int(steps), full)
    epoch_seed = (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)
    ds = _records(builder, split, epoch_seed if shuffle_buffer else None)
    if shuffle_buffer > 0:
        ds = ds.shuffle(
            shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
        )
    ds = ds.batch(batch_size, drop_remainder=True).take(steps)
    return ds.map(
        _parser(builder),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(tf.data.AUTOTUNE)


def split_blocks(builder, split, block_size, labels=()):
    """Every row of `split` once, `block_size` rows at a time, as numpy.

    Blocks (the last one smaller) of `"features"` (float32 `(n, D)`),
    `"gps"` `(n, 2)` and each string field named in `labels` (bytes), in
    the order of tfds's `builder.as_dataset(split, shuffle_files=False)`,
    read as the training streams read (TFRecord files directly, one parse
    and decode per block), many times faster than tfds's per-example
    decoding (BENCHMARKS.md, "The reference set and the evaluation read as
    the training does"). A slice of a split (`"test[:10%]"`) is read by
    tfds.

    Args:
        builder: a built `geotagged_features` builder.
        split: its split.
        block_size: int >= 1.
        labels: names of string fields to read too (e.g.
            `gv.data.corpus_reader.LABELS`).

    Returns:
        An iterator of dicts of numpy arrays.
    """
    tf = _tf()
    check_int("block_size", block_size)
    bound_heap_growth()
    labels = tuple(labels)
    if split not in builder.info.splits:
        import tensorflow_datasets as tfds

        def pick(e):
            out = {"features": tf.cast(e["features"], "float32")}
            return dict(out, gps=e["gps"], **{k: e[k] for k in labels})

        ds = builder.as_dataset(split=split, shuffle_files=False).map(pick)
        return iter(tfds.as_numpy(ds.batch(block_size)))
    parse = _parser(builder)
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in labels}

    def parse_block(serialized):
        x, gps = parse(serialized)
        extra = tf.io.parse_example(serialized, spec) if spec else {}
        return dict(extra, features=x, gps=gps)

    # tfds's own interleave when it may shuffle: 16 files, 16 rows each.
    ds = _records(builder, split, cycle_length=16, block_length=16)
    ds = ds.batch(block_size).map(parse_block).prefetch(1)
    return ds.as_numpy_iterator()


def _records(builder, split, seed=None, cycle_length=4, block_length=64):
    """The serialized examples of `split`, files in an order drawn from
    `seed` (None: stored order), read a few files at a time."""
    import numpy as np

    tf = _tf()
    names = builder.info.splits[split].filenames
    if seed is not None:
        names = [
            names[i]
            for i in np.random.default_rng(seed).permutation(len(names))
        ]
    files = [os.path.join(builder.data_dir, name) for name in names]
    ds = tf.data.Dataset.from_tensor_slices(files)
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=min(cycle_length, len(files)),
        block_length=block_length,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _parser(builder):
    """Batch of serialized examples -> `(features float32 (B, D), gps)`:
    one vectorised parse and one decode per batch."""
    tf = _tf()
    info = builder.info.features["features"]
    dim, dtype = info.shape[0], tf.as_dtype(info.np_dtype)
    spec = {
        "features": tf.io.FixedLenFeature([], tf.string),
        "gps": tf.io.FixedLenFeature([2], tf.float32),
    }

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        x = tf.io.decode_raw(ex["features"], dtype)
        # The batch size stays static (Keras shards a data set between the
        # processes of a job only when it knows the batch size).
        rows = serialized.shape[0]
        rows = -1 if rows is None else rows
        return tf.cast(tf.reshape(x, (rows, dim)), "float32"), ex["gps"]

    return parse


def schedule(builder, split, batch_size, checkpoints_per_epoch=1):
    """`(steps per epoch, steps per checkpoint)` of `training_stream`."""
    check_int("checkpoints_per_epoch", checkpoints_per_epoch)
    full = steps_per_epoch(builder, split, batch_size)
    per_epoch = min(checkpoints_per_epoch, full)
    chunk = full // per_epoch
    return chunk * per_epoch, chunk


def training_stream(
    builder,
    split,
    batch_size,
    epochs,
    seed=0,
    shuffle_buffer=16384,
    start_step=0,
    checkpoints_per_epoch=1,
):
    """Epochs `0..epochs-1` of `epoch_stream` as one stream, from a step.

    Each epoch has `chunk * checkpoints_per_epoch` batches, `chunk` the
    whole number of steps between checkpoints: fewer than
    `checkpoints_per_epoch` full batches more than with one checkpoint per
    epoch are left out (other rows in every epoch). `start_step` batches,
    counted from the first epoch's first batch, are left out: the epoch
    they fall in is read from its start and its first batches skipped
    (reading them costs I/O, not training); earlier epochs are not read.

    In a job of several processes (`gv.backend.data_parallel`) every
    process reads the same stream and its input pipeline keeps its share of
    each global batch (`tf.data` auto-sharding by data on TensorFlow,
    Keras's `distribute_dataset` on JAX), so the global batches are those
    of one process.

    Returns:
        `(dataset, steps_per_epoch, chunk)`; the dataset has
        `epochs * steps_per_epoch - start_step` batches.
    """
    check_int("epochs", epochs)
    check_int("start_step", start_step, 0)
    steps, chunk = schedule(builder, split, batch_size, checkpoints_per_epoch)
    if start_step > epochs * steps:
        raise ValueError(
            f"`start_step` must be at most {epochs * steps} "
            f"({epochs} epochs of {steps} steps); got {start_step}."
        )
    first = min(start_step // steps, epochs - 1)
    stream = None
    for epoch in range(first, epochs):
        ds = epoch_stream(
            builder, split, batch_size, epoch, seed, shuffle_buffer, steps
        )
        if epoch == first:
            ds = ds.skip(start_step - first * steps)
        stream = ds if stream is None else stream.concatenate(ds)
    # In a job of several processes, each reads this stream and keeps its
    # share of every global batch (sharding by file would change batches).
    tf = _tf()
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = policy
    return stream.with_options(options), steps, chunk
