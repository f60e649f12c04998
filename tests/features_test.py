"""Features computed once, stored, streamed into training and evaluation.

`extract_features` against the backbone run on photos read independently
(PIL, the CSV's order), its resumption against an uninterrupted run, the
`geotagged_features` data set and its streams, `fit_resumable` against an
uninterrupted fit, and streamed evaluation against the in-memory path.
The SIGKILL versions of the resumption tests are in
`tests/kill_resume_test.py` (slow).
"""

import csv
import functools
import json
import os
import re
import threading

import keras
import numpy as np
import pytest

import geovario_keras as gv
from geovario_keras.data import features as features_lib
from geovario_keras.data.corpus_reader import CorpusReader
from geovario_keras.data.features_beam import FeaturesJob
from geovario_keras.saving import folder_lock
from geovario_keras.testing.tiny_backbone import tiny_backbone
from tests.testing import slow_on
from tests.testing import small_geoclip

SIZE = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return gv.data.write_blue_marble_corpus(
        root / "c", num_train=300, num_test=60, image_size=SIZE
    )


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("features") / "f"
    reader = CorpusReader("osv5m", corpus, SIZE)
    backbone = tiny_backbone()
    features_lib.extract_features(
        reader, backbone, folder, shard_size=64, batch_size=16, verbose=0
    )
    return folder, backbone


def _rows(folder, split):
    shards = [
        features_lib.read_shard(path, rows)
        for path, rows in features_lib.shard_paths(folder, split)
    ]
    keys = [k for k in shards[0] if k != "skipped"]
    return {k: np.concatenate([s[k] for s in shards]) for k in keys}


def test_features_equal_the_backbone_on_photos_read_independently(
    corpus, extracted
):
    from PIL import Image

    folder, backbone = extracted
    with open(os.path.join(corpus, "train.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack(
        [
            np.asarray(
                Image.open(
                    os.path.join(corpus, "images", "train", r["id"] + ".jpg")
                ).convert("RGB")
            )
            for r in rows
        ]
    )
    want = keras.ops.convert_to_numpy(backbone(images))
    got = _rows(folder, "train")
    assert got["features"].dtype == np.float16
    assert list(got["id"]) == [r["id"] for r in rows]
    np.testing.assert_array_equal(got["row"], np.arange(len(rows)))
    np.testing.assert_allclose(
        got["gps"],
        [[float(r["latitude"]), float(r["longitude"])] for r in rows],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        got["features"].astype("float32"), want, rtol=2e-3, atol=2e-3
    )
    manifest = features_lib.read_manifest(folder)
    assert manifest["complete"] and manifest["splits"]["train"]["kept"] == 300
    assert manifest["splits"]["train"]["shards"] == 5  # 300 rows / 64


def test_an_interrupted_extraction_resumes_with_the_same_rows(
    corpus, extracted, tmp_path, monkeypatch
):
    folder, backbone = extracted
    reads = {"n": 0, "stop_at": 150}
    original = CorpusReader.read_image

    def read_image(self, path):
        reads["n"] += 1
        if reads["n"] == reads["stop_at"]:
            raise KeyboardInterrupt("killed")
        return original(self, path)

    monkeypatch.setattr(CorpusReader, "read_image", read_image)
    reader = CorpusReader("osv5m", corpus, SIZE)
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        features_lib.extract_features(
            reader, backbone, again, shard_size=64, batch_size=16, verbose=0
        )
    assert not features_lib.read_manifest(again)["complete"]
    finished = len(list(again.glob("train-*.npz")))
    assert 0 < finished < 5 and not list(again.glob("*.tmp*"))
    reads.update(n=0, stop_at=-1)
    features_lib.extract_features(
        reader, backbone, again, shard_size=64, batch_size=16, verbose=0
    )
    # Finished shards were not recomputed: fewer photos read than 360.
    assert reads["n"] == 360 - 64 * finished
    for split in ("train", "test"):
        want, got = _rows(folder, split), _rows(again, split)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_skips_are_counted_and_other_settings_refused(corpus, tmp_path):
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    with open(copy / "train.csv") as f:
        lines = f.read().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "nan", 1)
    with open(copy / "train.csv", "w") as f:
        f.write("\n".join(lines) + "\n")
    first = lines[1].split(",")[0]
    (copy / "images" / "train" / f"{first}.jpg").write_bytes(b"not a jpeg")
    reader = CorpusReader("osv5m", copy, SIZE)
    folder = tmp_path / "f"
    manifest = features_lib.extract_features(
        reader, tiny_backbone(), folder, shard_size=64, verbose=0
    )
    assert manifest["splits"]["train"]["skipped"] == {
        "out_of_range_coordinate": 1,
        "unreadable_image": 1,
    }
    assert manifest["splits"]["train"]["kept"] == 298
    with pytest.raises(FileExistsError, match="shard_size"):
        features_lib.extract_features(
            reader, tiny_backbone(), folder, shard_size=32, verbose=0
        )
    with pytest.raises(FileExistsError, match="backbone"):
        features_lib.extract_features(
            reader, tiny_backbone(seed=1), folder, shard_size=64, verbose=0
        )
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        features_lib.extract_features(
            reader, tiny_backbone(), folder, dtype="int8", verbose=0
        )


def test_a_damaged_shard_is_an_error_that_names_it(extracted, tmp_path):
    import shutil

    folder, _ = extracted
    copy = tmp_path / "f"
    shutil.copytree(folder, copy)
    path, _ = features_lib.shard_paths(copy, "train")[2]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        gv.data.geotagged_features(copy, data_dir=str(tmp_path / "tfds"))
    assert os.path.basename(path) in str(info.value)
    # A shard with rows missing (not truncated) is an error too.
    path, rows = features_lib.shard_paths(copy, "train")[1]
    data = features_lib.read_shard(path, rows)
    skipped = json.dumps(data.pop("skipped"))
    np.savez(path, skipped=skipped, **{k: v[1:] for k, v in data.items()})
    with pytest.raises(ValueError, match="inconsistent"):
        features_lib.read_shard(path, rows)


@pytest.fixture(scope="module")
def builder(extracted, tmp_path_factory):
    folder, _ = extracted
    data_dir = tmp_path_factory.mktemp("tfds")
    return gv.data.geotagged_features(folder, data_dir=str(data_dir))


def _batches(ds):
    return [tuple(np.asarray(t) for t in batch) for batch in ds]


def test_the_stream_is_a_function_of_seed_and_epoch(builder):
    streams = gv.data.streams
    one = _batches(streams.epoch_stream(builder, "train", 32, 0, 7, 100))
    assert len(one) == 300 // 32
    same = _batches(streams.epoch_stream(builder, "train", 32, 0, 7, 100))
    for a, b in zip(one, same):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = _batches(streams.epoch_stream(builder, "train", 32, 1, 7, 100))
    assert not np.array_equal(one[0][1], other[0][1])
    rows = np.concatenate([b[1] for b in one])
    assert len(np.unique(rows, axis=0)) == len(rows)  # no row twice
    # A stream started at step 13 is the whole stream without 13 batches.
    whole, steps, chunk = streams.training_stream(
        builder, "train", 32, 3, 7, 100, checkpoints_per_epoch=4
    )
    assert (steps, chunk) == (8, 2)  # 9 full batches -> 4 chunks of 2
    late, _, _ = streams.training_stream(
        builder, "train", 32, 3, 7, 100, start_step=13, checkpoints_per_epoch=4
    )
    whole, late = _batches(whole), _batches(late)
    assert len(whole) == 24 and len(late) == 11
    for a, b in zip(whole[13:], late):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="`batch_size` must be at most"):
        streams.steps_per_epoch(builder, "test", 61)


@pytest.mark.parametrize("files", [1, 20])
def test_split_blocks_are_tfds_rows_in_tfds_order(extracted, tmp_path, files):
    # The evaluation's reader against tfds's own `as_dataset` (per-example
    # decoding): the same rows, values and labels in the same order, with
    # more files than tfds interleaves at once (16); a slice of a split
    # goes through tfds itself.
    import tensorflow_datasets as tfds

    folder, _ = extracted
    built = gv.data.geotagged_features(
        folder, data_dir=str(tmp_path), verbose=False, num_shards=files
    )
    assert len(built.info.splits["train"].filenames) == files
    labels = gv.data.corpus_reader.LABELS
    for split in ("train", "test", "train[10:50]"):
        want = tfds.as_numpy(
            built.as_dataset(split=split, shuffle_files=False).batch(1000)
        )
        want = next(iter(want))
        blocks = list(gv.data.streams.split_blocks(built, split, 7, labels))
        assert [len(b["gps"]) for b in blocks[:-1]] == [7] * (len(blocks) - 1)
        got = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
        assert got.keys() == {"features", "gps", *labels}
        assert got["features"].dtype == np.float32
        np.testing.assert_array_equal(
            got["features"], want["features"].astype("float32"), err_msg=split
        )
        for key in ("gps",) + labels:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _feature_model(seed=0, queue_size=64, embed_dim=16):
    keras.utils.set_random_seed(seed)
    model = small_geoclip(queue_size=queue_size, embed_dim=embed_dim, seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=gv.losses.SemivariogramContrastiveLoss(),
    )
    model.build((None, 16))
    # A trusted fit from the start, so that the first epoch's steps (where
    # the runs are interrupted) re-weight negatives.
    model.variogram.set_fit(
        gv.semivariogram.VariogramFit(
            "exponential",
            nugget=0.1,
            psill=0.5,
            length_scale=500.0,
            converged=True,
        )
    )
    return model


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt("killed")


def _fit(model, builder, directory, interrupt_at=None, min_pairs=1):
    callbacks = [gv.training.semivariogram_callback(3, min_pairs=min_pairs)]
    if interrupt_at:
        callbacks.append(_Interrupt(interrupt_at))
    return gv.training.fit_resumable(
        model,
        builder,
        directory,
        epochs=3,
        batch_size=32,
        checkpoints_per_epoch=3,
        shuffle_buffer=100,
        callbacks=callbacks,
        verbose=0,
    )


def test_fit_resumable_continues_exactly_after_interruptions(builder, tmp_path):
    whole = _feature_model()
    history = _fit(whole, builder, tmp_path / "whole")
    assert len(history.history["loss"]) == 9  # 3 epochs x 3 checkpoints
    for at in (5, 4):  # mid-chunk, twice
        with pytest.raises(KeyboardInterrupt):
            _fit(_feature_model(), builder, tmp_path / "cut", at)
    resumed = _feature_model()
    history2 = _fit(resumed, builder, tmp_path / "cut")
    assert len(history2.history["loss"]) == 9 - 2  # two chunks were saved
    np.testing.assert_allclose(
        history2.history["loss"], history.history["loss"][2:], atol=1e-4
    )
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            atol=1e-5,
            err_msg=a.path,
        )
    # A finished run only loads its final weights.
    again = _feature_model()
    assert _fit(again, builder, tmp_path / "cut") is None
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(again.weights[0]),
        keras.ops.convert_to_numpy(resumed.weights[0]),
    )


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _interrupted(builder, directory, at=8):
    # Two checkpoints (steps 3 and 6) and two steps beyond them.
    with pytest.raises(KeyboardInterrupt):
        _fit(_feature_model(), builder, directory, at)
    return gv.training.checkpoints(directory)


def _files(directory):
    # The checkpoints and run.json, by modification time (the lock file
    # notes each run that takes it).
    return {
        name: os.path.getmtime(os.path.join(directory, name))
        for name in os.listdir(directory)
        if name != ".lock"
    }


def test_a_damaged_newest_checkpoint_resumes_exactly_from_the_one_before(
    builder, tmp_path
):
    whole = _feature_model()
    history = _fit(whole, builder, tmp_path / "whole")
    found = _interrupted(builder, tmp_path / "cut")
    assert [step for step, _ in found] == [3, 6]
    with open(found[-1][1], "r+b") as f:  # e.g. a copy cut short
        f.truncate(1000)
    resumed = _feature_model()
    with pytest.warns(UserWarning, match="Resuming from .*step 3"):
        history2 = _fit(resumed, builder, tmp_path / "cut")
    # Steps 4 to 27 again, in the uninterrupted run's order.
    np.testing.assert_allclose(
        history2.history["loss"], history.history["loss"][1:], atol=1e-4
    )
    for a, b, w in zip(_weights(whole), _weights(resumed), whole.weights):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=w.path)


def test_checkpoints_of_another_model_or_run_are_refused_untouched(
    builder, tmp_path
):
    directory = tmp_path / "cut"
    _interrupted(builder, directory)
    before = _files(directory)
    other = _feature_model(queue_size=32, embed_dim=8)  # another model
    other_weights = _weights(other)
    with pytest.raises(ValueError, match="None of the 2 checkpoints"):
        _fit(other, builder, directory)
    # Some of its variables had matched the file's and loaded: put back.
    for a, b, w in zip(other_weights, _weights(other), other.weights):
        np.testing.assert_array_equal(a, b, err_msg=w.path)
    for argument, value in (("seed", 1), ("shuffle_buffer", 50)):
        with pytest.raises(ValueError, match=f"'{argument}'"):
            settings = dict(checkpoints_per_epoch=3, shuffle_buffer=100)
            settings[argument] = value
            gv.training.fit_resumable(
                _feature_model(),
                builder,
                directory,
                epochs=3,
                batch_size=32,
                verbose=0,
                **settings,
            )
    # Another loss or optimizer setting: Keras's load would also put the
    # checkpoint's learning rate over the new one without a word.
    for changed, named in (
        ({"optimizer": keras.optimizers.Adam(1e-4)}, "optimizer.learning_rate"),
        (
            {"loss": gv.losses.SemivariogramContrastiveLoss(max_weight=3.0)},
            "loss.max_weight",
        ),
        ({"loss": gv.losses.GeoContrastiveLoss()}, "'loss': ('Semivariogram"),
    ):
        model = _feature_model()
        model.compile(
            **{
                "optimizer": keras.optimizers.Adam(1e-3),
                "loss": gv.losses.SemivariogramContrastiveLoss(),
                **changed,
            }
        )
        with pytest.raises(ValueError, match=re.escape(named)):
            _fit(model, builder, directory)
    # Another refit setting of the semivariogram callback.
    with pytest.raises(
        ValueError, match=re.escape("callbacks.SemivariogramCallback.min_pairs")
    ):
        _fit(_feature_model(), builder, directory, min_pairs=5)
    with pytest.raises(ValueError, match="`epochs` must be an int >= 1"):
        gv.training.fit_resumable(
            _feature_model(), builder, directory, epochs=0, batch_size=32
        )
    assert _files(directory) == before
    # Nothing was lost: the run resumes from its step 6.
    resumed = _feature_model()
    history = _fit(resumed, builder, directory)
    assert len(history.history["loss"]) == 9 - 2


def test_features_of_another_size_are_refused_before_any_step(
    builder, tmp_path
):
    # The stored features are 16-d; this model was built for 8-d ones.
    keras.utils.set_random_seed(0)
    model = small_geoclip(queue_size=64, embed_dim=16)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.build((None, 8))
    match = "`builder` .* features of size 16, but `model` .* size 8"
    with pytest.raises(ValueError, match=match):
        gv.training.fit_resumable(
            model, builder, tmp_path / "run", epochs=1, batch_size=32
        )
    for evaluate in (
        gv.evaluation.evaluate_features,
        gv.evaluation.set_reference_from_features,
    ):
        with pytest.raises(ValueError, match=match):
            evaluate(model, builder, "test", verbose=0)
    assert not os.path.exists(tmp_path / "run")


def test_a_folder_being_written_is_refused(builder, corpus, tmp_path):
    directory = tmp_path / "run"
    with folder_lock(directory, "another run"):
        with pytest.raises(RuntimeError, match="another run, pid"):
            _fit(_feature_model(), builder, directory)
        with pytest.raises(RuntimeError, match="being written"):
            features_lib.extract_features(
                CorpusReader("osv5m", corpus, SIZE),
                tiny_backbone(),
                directory,
                verbose=0,
            )
        job = FeaturesJob("osv5m", corpus, tiny_backbone, directory, SIZE)
        with pytest.raises(RuntimeError, match="being written"):
            gv.data.geotagged_features_beam(job, str(tmp_path / "tfds"))
    assert gv.training.checkpoints(directory) == []
    # Released (as when a run ends, however it ends): the next run writes.
    assert len(_fit(_feature_model(), builder, directory).history["loss"]) == 9


def test_the_beam_job_holds_its_folder_until_it_ends(
    corpus, tmp_path, monkeypatch
):
    # Not only the job's start: while the pipeline's workers write their
    # shards, `extract_features` on the folder (here from another thread,
    # refused as another process is) would delete their partial files.
    import importlib

    builders = importlib.import_module(
        "geovario_keras.data.builders.geotagged_features"
    )

    directory = tmp_path / "beam"
    job = FeaturesJob("osv5m", corpus, tiny_backbone, directory, SIZE)
    refused = []

    def other_run():
        try:
            features_lib.extract_features(
                CorpusReader("osv5m", corpus, SIZE),
                tiny_backbone(),
                directory,
                verbose=0,
            )
        except RuntimeError as e:
            refused.append(str(e))

    class PipelineRan(Exception):
        pass

    def pipeline(builder, download_config):  # in place of Beam's run
        thread = threading.Thread(target=other_run)
        thread.start()
        thread.join()
        raise PipelineRan

    monkeypatch.setattr(builders, "prepare", pipeline)
    with pytest.raises(PipelineRan):
        gv.data.geotagged_features_beam(job, data_dir=str(tmp_path / "tfds"))
    assert len(refused) == 1
    assert "geotagged_features_beam, pid" in refused[0]
    assert not features_lib.read_manifest(directory)["splits"]
    with folder_lock(directory, "the next run"):  # released at the error
        pass


def test_a_folder_this_process_cannot_write_is_read_unlocked(
    tmp_path, monkeypatch
):
    # As a finished run loading its weights from a read-only folder (root
    # writes everywhere, so the lock file's opening is refused here).
    from geovario_keras import saving

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(saving, "open", refused, raising=False)
    with folder_lock(tmp_path, "a finished run"):
        with folder_lock(tmp_path, "another"):
            pass
    assert os.listdir(tmp_path) == []


def test_streamed_evaluation_equals_the_in_memory_path(builder):
    model = _feature_model()
    train = gv.data.as_arrays(builder, "train")
    test = gv.data.as_arrays(builder, "test")
    model.set_gallery(train["gps"][::3], verbose=0)
    model.set_reference(
        train["features"].astype("float32"), train["gps"], verbose=0
    )
    ref_emb = np.array(keras.ops.convert_to_numpy(model.reference.embeddings))
    assert gv.evaluation.set_reference_from_features(
        model, builder, "train", block_size=50, verbose=0
    ) == len(train["gps"])
    # Stored order differs from `as_arrays`'s? Compare as sets of rows.
    new_emb = keras.ops.convert_to_numpy(model.reference.embeddings)
    np.testing.assert_allclose(
        np.sort(new_emb, axis=0), np.sort(ref_emb, axis=0), atol=1e-5
    )
    labels = {k: test[k] for k in gv.metrics.ADMIN_LEVELS}
    for mode in ("gallery", "reference", "hybrid"):
        coords, _ = model.predict_gps(
            test["features"].astype("float32"), top_k=1, mode=mode
        )
        want = gv.metrics.geolocation_report(
            coords[:, 0], test["gps"], admin_levels=True, true_labels=labels
        )
        got, _ = gv.evaluation.evaluate_features(
            model, builder, "test", mode, block_size=25, verbose=0
        )
        for key, value in want.items():
            if np.isnan(value):
                assert np.isnan(got[key]), key
            else:
                assert got[key] == pytest.approx(value, abs=1e-3), key


def test_a_saved_and_loaded_model_has_the_digest_of_the_trained_one(
    builder, tmp_path
):
    # `recipes/paper.py` evaluates the model it has just trained, and
    # after a kill the `model.keras` it saved: the evaluation's kept
    # blocks must be taken as the same model's (variable paths differ
    # between processes; values and order must not).
    model = _feature_model()
    _fit(model, builder, tmp_path / "run")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = gv.load_model(path)
    train = gv.data.as_arrays(builder, "train")
    for m in (model, loaded):
        m.set_gallery(train["gps"][::3], verbose=0)
    digest = gv.evaluation.model_digest
    assert digest(loaded) == digest(model)
    loaded.set_gallery(train["gps"][::4], verbose=0)  # another gallery
    assert digest(loaded) != digest(model)


def test_a_split_that_yields_fewer_rows_than_its_info_is_an_error(
    builder, monkeypatch
):
    # A damaged data set read short: never a report over unset rows.
    model = _feature_model()
    model.set_gallery(gv.data.as_arrays(builder, "train")["gps"], verbose=0)
    blocks = gv.evaluation._blocks

    def short(*args, **kwargs):
        return list(blocks(*args, **kwargs))[:-1]

    monkeypatch.setattr(gv.evaluation, "_blocks", short)
    for run in (
        lambda: gv.evaluation.set_reference_from_features(
            model, builder, block_size=50, verbose=0
        ),
        lambda: gv.evaluation.evaluate_features(
            model, builder, block_size=25, verbose=0
        ),
    ):
        with pytest.raises(ValueError, match="yielded .* rows, its info"):
            run()


def test_a_killed_evaluation_resumes_from_its_finished_blocks(
    builder, tmp_path, monkeypatch
):
    # `evaluate_features(backup_dir=...)` killed in its third block: run
    # again, it predicts only the blocks it had not finished, and its
    # report and predictions are those of an uninterrupted evaluation.
    model = _feature_model()
    train = gv.data.as_arrays(builder, "train")
    model.set_gallery(train["gps"][::3], verbose=0)
    gv.evaluation.set_reference_from_features(model, builder, verbose=0)
    want, want_pred = gv.evaluation.evaluate_features(
        model, builder, "test", "hybrid", block_size=10, verbose=0
    )
    blocks = -(-len(want_pred) // 10)
    assert blocks >= 4
    predict, calls = model.predict_gps, []

    def killed_at(block):
        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) == block:
                raise KeyboardInterrupt("killed")
            return predict(*args, **kwargs)

        return counted

    backup = tmp_path / "eval"
    # A bad mode or option is refused before anything is written.
    for bad, named in (
        ({"mode": "galery"}, "`mode`"),
        ({"neighbours": 0}, "neighbours"),
    ):
        arguments = {"mode": "hybrid", **bad}
        with pytest.raises(ValueError, match=named):
            gv.evaluation.evaluate_features(
                model, builder, "test", backup_dir=backup, **arguments
            )
        assert not os.path.exists(backup)
    evaluate = functools.partial(
        gv.evaluation.evaluate_features,
        model,
        builder,
        "test",
        "hybrid",
        block_size=10,
        verbose=0,
        backup_dir=backup,
    )
    monkeypatch.setattr(model, "predict_gps", killed_at(3))
    with pytest.raises(KeyboardInterrupt):
        evaluate()
    assert sorted(n for n in os.listdir(backup) if n.startswith("block")) == [
        "block-000000000.npy",
        "block-000000001.npy",
    ]
    before = _files(backup)
    # Another evaluation's kept predictions are refused, files untouched.
    for changed, named in (
        (dict(mode="gallery"), "'mode'"),
        (dict(block_size=8), "'block_size'"),
        (dict(neighbours=8), "'options'"),
    ):
        arguments = {"mode": "hybrid", "block_size": 10, **changed}
        with pytest.raises(ValueError, match=named):
            gv.evaluation.evaluate_features(
                model,
                builder,
                "test",
                verbose=0,
                backup_dir=backup,
                **arguments,
            )
    other = _feature_model(seed=1)
    other.set_gallery(train["gps"][::3], verbose=0)
    gv.evaluation.set_reference_from_features(other, builder, verbose=0)
    with pytest.raises(ValueError, match="'model'"):
        gv.evaluation.evaluate_features(
            other,
            builder,
            "test",
            "hybrid",
            block_size=10,
            verbose=0,
            backup_dir=backup,
        )
    assert _files(backup) == before
    calls.clear()
    monkeypatch.setattr(model, "predict_gps", killed_at(0))  # counts only
    got, got_pred = evaluate()
    assert len(calls) == blocks - 2
    np.testing.assert_array_equal(got_pred, want_pred)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == value or (np.isnan(got[key]) and np.isnan(value))
    assert not os.path.exists(backup)  # removed at the end
    # Several processes would each skip other blocks: refused.
    monkeypatch.setattr(gv.backend, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="`backup_dir` .* has 2"):
        evaluate()


@slow_on("tensorflow", "torch")
def test_beam_with_two_worker_processes_builds_the_same_data_set(
    corpus, builder, tmp_path
):
    """The Apache Beam route (DirectRunner, 2 worker processes, one shard
    per element, each worker with its own backbone) gives the data set of
    the single-process extraction: same rows, same order, same manifest
    counts. Default suite on JAX; the workers run the test's backend."""
    pytest.importorskip("apache_beam")
    import functools

    from apache_beam.options.pipeline_options import PipelineOptions

    job = FeaturesJob(
        "osv5m",
        corpus,
        functools.partial(tiny_backbone, seed=0),
        tmp_path / "beam",
        image_size=SIZE,
        shard_size=64,
        batch_size=16,
    )
    options = PipelineOptions(
        direct_num_workers=2, direct_running_mode="multi_processing"
    )
    beam_builder = gv.data.geotagged_features_beam(
        job, data_dir=str(tmp_path / "tfds"), beam_options=options
    )
    for split in ("train", "test"):
        want = gv.data.as_arrays(builder, split)
        got = gv.data.as_arrays(beam_builder, split)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    manifest = features_lib.read_manifest(tmp_path / "beam")
    assert manifest["complete"]
    assert manifest["splits"]["train"] == {
        "rows": 300,
        "shards": 5,
        "kept": 300,
        "skipped": {},
    }


def test_extraction_on_four_devices_equals_one():
    # JAX with `keras.distribution.DataParallel` over 4 virtual CPU devices
    # (a fresh process: the devices are set before JAX starts): every batch
    # is split over the 4 devices, and the stored features are those of
    # the single-device extraction.
    import subprocess
    import sys

    if keras.backend.backend() != "jax":
        pytest.skip("multi-device extraction goes through keras.distribution")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, os.path.join(here, "distributed_extraction.py")],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices_before"] == 1
    assert result["devices"] == result["batch_devices"] == 4
    assert result["rows"] == [150, 150]
    assert result["max_difference"] == 0.0
    assert "multiple of the 4 devices" in result["error"]
