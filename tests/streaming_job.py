"""A job of `kill_resume_test.py`, run in its own process (and killed).

`extract CORPUS FOLDER`: features of the corpus with a seeded tiny backbone.
`train FEATURES TFDS CHECKPOINTS OUT`: `fit_resumable` on them; the final
weights and the losses of this run go to `OUT` (.npz).
`evaluate FEATURES TFDS BACKUP OUT`: `evaluate_features` of a seeded model
in hybrid mode, 4 queries a block, its finished blocks kept in `BACKUP`;
the predictions, the report's numbers and the blocks this run predicted
go to `OUT` (.npz).
Prints "working" when the work (not the imports) begins, "chunk" at each
training checkpoint interval or predicted block, and "done" when the work
has ended (before the process's own exit, which can take as long as the
work here).
"""

import sys

import keras
import numpy as np

import geovario_keras as gv
from geovario_keras.data import features as features_lib
from geovario_keras.data.corpus_reader import CorpusReader
from geovario_keras.testing.tiny_backbone import tiny_backbone
from tests.testing import small_geoclip


def extract(corpus, folder):
    reader = CorpusReader("osv5m", corpus, 32)
    net = tiny_backbone()
    print("working", flush=True)
    features_lib.extract_features(
        reader, net, folder, shard_size=32, batch_size=8, verbose=0
    )


def train(features, data_dir, checkpoints, out):
    builder = gv.data.geotagged_features(features, data_dir, verbose=False)
    keras.utils.set_random_seed(0)
    model = small_geoclip(queue_size=64, embed_dim=16, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=gv.losses.SemivariogramContrastiveLoss(),
    )
    model.build((None, 16))
    print("working", flush=True)
    history = gv.training.fit_resumable(
        model,
        builder,
        checkpoints,
        epochs=6,
        batch_size=32,
        checkpoints_per_epoch=3,
        shuffle_buffer=100,
        callbacks=[
            gv.training.semivariogram_callback(3, min_pairs=1),
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda *_: print("chunk", flush=True)
            ),
        ],
        verbose=0,
    )
    losses = history.history["loss"] if history else []
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    np.savez(
        out,
        losses=np.array(losses),
        **{f"w{i}": w for i, w in enumerate(weights)},
    )


def evaluate(features, data_dir, backup, out):
    builder = gv.data.geotagged_features(features, data_dir, verbose=False)
    keras.utils.set_random_seed(0)
    model = small_geoclip(queue_size=64, embed_dim=16, seed=0)
    model.build((None, 16))
    train = gv.data.as_arrays(builder, "train")
    model.set_gallery(train["gps"][::3], verbose=0)
    gv.evaluation.set_reference_from_features(model, builder, verbose=0)
    predict, predicted = model.predict_gps, []

    def counted(*args, **kwargs):
        result = predict(*args, **kwargs)
        predicted.append(1)
        print("chunk", flush=True)
        return result

    model.predict_gps = counted
    print("working", flush=True)
    report, pred = gv.evaluation.evaluate_features(
        model,
        builder,
        "test",
        "hybrid",
        block_size=4,
        verbose=0,
        backup_dir=backup,
    )
    keys = sorted(report)
    np.savez(
        out,
        pred=pred,
        keys=np.array(keys),
        values=np.array([report[k] for k in keys], "float64"),
        predicted=len(predicted),
    )


if __name__ == "__main__":
    jobs = {"extract": extract, "train": train, "evaluate": evaluate}
    jobs[sys.argv[1]](*sys.argv[2:])
    print("done", flush=True)
