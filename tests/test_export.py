"""Tests for oneshot_tf.export and retrain.retrain_and_export."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import data as data_lib
from oneshot_tf import io_utils
from oneshot_tf import retrain as retrain_lib
from oneshot_tf.methods.oneshot.cell_space import Block, CellArchitecture, CellSearchSpace
from oneshot_tf.export import export_saved_model, load_serving, serving_info
from oneshot_tf.search_space import StandaloneOptions
from oneshot_tf.training import TrainConfig

SHAPE = (8, 8, 3)
CLASSES = 5


def _space(filters=4):
    return CellSearchSpace(num_cells=2, num_stages=2, filters=filters, num_blocks=2)


def _arch():
    return CellArchitecture((Block((0, 1), ("sep3x3", "maxpool3x3")), Block((2,), ("conv1x7_7x1",))))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n,) + SHAPE, dtype=np.uint8)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = _space().build_model(_arch(), input_shape=SHAPE, num_classes=CLASSES,
                                 options=StandaloneOptions(mean=[120.0, 110.0, 100.0], std=[60.0, 50.0, 40.0]))
    # Move the BN moving statistics away from their initial values, so that
    # serving in training mode (batch statistics) would give other numbers.
    for i in range(3):
        model(tf.constant(_images(16, seed=100 + i)), training=True)
    return model


def _leftovers(parent):
    return sorted(n for n in os.listdir(parent) if ".tmp-" in n)


def test_export_round_trip_serves_probabilities(tmp_path):
    model = _model()
    path = str(tmp_path / "sm")
    assert export_saved_model(model, path) == path
    x = _images(7, seed=1)
    expected = tf.nn.softmax(model(tf.constant(x), training=False), axis=-1).numpy()
    # Images of another size, and the model on them resized as load_dataset(image_size=8) does.
    raw = np.random.default_rng(4).integers(0, 256, size=(6, 11, 13, 3), dtype=np.uint8)
    resized = data_lib.resize_images(raw, SHAPE[0]).numpy()
    expected_raw = tf.nn.softmax(model(tf.constant(resized), training=False), axis=-1).numpy()
    batch_stats = tf.nn.softmax(model(tf.constant(x), training=True), axis=-1).numpy()
    assert not np.allclose(expected, batch_stats, atol=1e-4)  # the check below can tell them apart

    loaded = tf.saved_model.load(path)
    got = loaded.serve(tf.constant(x)).numpy()
    assert got.shape == (7, CLASSES)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # serve / serving_default: uint8 NHWC images of any size; serve_resized: of the model's size.
    (spec,) = loaded.serve.input_signature
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, SHAPE[-1]]
    (spec,) = loaded.serve_resized.input_signature
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, *SHAPE]
    for name, hw in (("serve", [None, None]), ("serving_default", [None, None]), ("serve_resized", SHAPE[:2])):
        (sig_spec,) = loaded.signatures[name].structured_input_signature[1].values()
        assert sig_spec.dtype == tf.uint8 and sig_spec.shape.as_list() == [None, *hw, SHAPE[-1]], name
    np.testing.assert_allclose(loaded.serve_resized(tf.constant(x)).numpy(), got, atol=1e-6)
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.constant(x.astype(np.float32)))
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.constant(_images(2)[..., :1]))  # 1 channel, the model takes 3
    # Any batch size, including one image.
    assert loaded.serve(tf.constant(x[:1])).shape == (1, CLASSES)

    # Images of another size are resized inside exactly as load_dataset(image_size=8) does.
    with tf.device("/CPU:0"):  # bit-identical on one device (see test_winner_serves_the_datasets_own_images)
        got = loaded.serve(tf.constant(raw)).numpy()
        np.testing.assert_array_equal(got, loaded.serve_resized(tf.constant(resized)).numpy())
    np.testing.assert_allclose(got, expected_raw, atol=1e-5)
    assert serving_info(path)["image_shape"] == serving_info(path)["source_image_shape"] == list(SHAPE)

    assert _leftovers(tmp_path) == []


def test_export_rejects_a_source_shape_the_model_cannot_take(tmp_path):
    model = _model()
    for bad in ((28, 28, 1), (28, 28), (0, 28, 3), "28x28"):
        with pytest.raises(ValueError, match="source_image_shape"):
            export_saved_model(model, str(tmp_path / "sm"), source_image_shape=bad)
    assert os.listdir(tmp_path) == []


def test_load_serving_returns_a_working_serve_function(tmp_path):
    """load_serving(path) is documented as "the exported serve function"; it
    must still work after the call returns (it must keep what it loaded alive)."""
    model = _model()
    path = str(tmp_path / "sm")
    export_saved_model(model, path)
    x = _images(4, seed=3)
    expected = tf.nn.softmax(model(tf.constant(x), training=False), axis=-1).numpy()
    serve = load_serving(path)
    np.testing.assert_allclose(serve(tf.constant(x)).numpy(), expected, atol=1e-5)
    assert serve.info["image_shape"] == list(SHAPE)


@pytest.mark.integration  # two retrainings and exports (~12 s): CI's integration step
def test_export_over_existing_export_replaces_it(tmp_path):
    path = str(tmp_path / "sm")
    export_saved_model(_model(seed=0), path)
    marker = os.path.join(path, "stale-file")
    with open(marker, "w") as f:
        f.write("from the first export")
    other = _model(seed=1)
    export_saved_model(other, path)
    assert not os.path.exists(marker)
    x = _images(5, seed=2)
    expected = tf.nn.softmax(other(tf.constant(x), training=False), axis=-1).numpy()
    loaded = tf.saved_model.load(path)  # keep the loaded object alive while serving
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
    assert _leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["sm"]


# ---------------------------------------------------------------------------
# retrain_and_export
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """8x8 digits resized to 6x6 by the data pipeline (as --image_size=6 does)."""
    return data_lib.load_dataset("digits", image_size=6, validation_size=64)


@pytest.fixture(scope="module")
def raw_digits():
    """The same splits at the dataset's own size (8x8), as a serving client holds them."""
    return data_lib.load_dataset("digits", validation_size=64)


SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
WINNER = CellArchitecture((Block((1,), ("sep3x3",)), Block((0, 2), ("identity", "avgpool3x3"))))
CFG = TrainConfig(steps=3, batch_size=32, learning_rate=0.05, checkpoint_every=2, log_every=1, verbose=False)


def _options(dataset):
    mean, std = dataset.channel_stats()
    return StandaloneOptions(mean=mean, std=std, bn_momentum=0.5)


@pytest.fixture(scope="module")
def winner(tmp_path_factory, digits):
    """One retrained and exported winner, shared by the tests below: (out_dir, metrics)."""
    out = str(tmp_path_factory.mktemp("retrain") / "winner")
    keras.utils.set_random_seed(0)
    metrics = retrain_lib.retrain_and_export(SPACE, WINNER, digits, out, CFG, width_multiplier=1.5,
                                             options=_options(digits),
                                             weight_decay=1e-4, extra_metrics={"rank": 1, "id": "abc"})
    return out, metrics


def test_retrain_and_export_writes_results_and_is_idempotent(winner, digits, monkeypatch):
    space, arch, cfg = SPACE, WINNER, CFG
    out, metrics = winner

    assert sorted(os.listdir(out)) == ["architecture.json", "architecture.png", "ckpt", "metrics.json", "saved_model",
                                       "train"]
    with open(os.path.join(out, "architecture.json")) as f:
        assert space.from_json(json.load(f)) == arch
    assert io_utils.read_json(os.path.join(out, "metrics.json")) == metrics

    wide = CellSearchSpace(num_cells=2, num_stages=2, filters=6, num_blocks=2)
    assert metrics["width"] == 6 and metrics["width_multiplier"] == 1.5
    assert metrics["params"] == wide.count_params(arch, input_shape=(6, 6, 1), num_classes=10)
    assert metrics["flops"] == wide.count_flops(arch, input_shape=(6, 6, 1), num_classes=10)
    assert metrics["train_steps"] == 3
    assert metrics["rank"] == 1 and metrics["id"] == "abc"
    assert 0.0 <= metrics["train_accuracy_last_step"] <= 1.0
    assert tf.train.latest_checkpoint(os.path.join(out, "ckpt")).endswith("ckpt-3")

    # The reported accuracies are those of the exported model.
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    serve = loaded.serve
    for x, y, key in ((digits.x_test, digits.y_test, "test_accuracy"),
                      (digits.x_val, digits.y_val, "validation_accuracy")):
        probs = serve(tf.constant(x)).numpy()
        assert probs.shape == (len(x), 10)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert metrics[key] == pytest.approx(float(np.mean(probs.argmax(-1) == y)))
    assert _leftovers(out) == []

    # Again: nothing is retrained or rewritten, the same metrics come back.
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in ("metrics.json", "architecture.json")}

    def no_training(*a, **k):
        raise AssertionError("retrained a finished winner")

    monkeypatch.setattr(retrain_lib, "train", no_training)
    monkeypatch.setattr(retrain_lib, "export_saved_model", no_training)
    again = retrain_lib.retrain_and_export(space, arch, digits, out, cfg, width_multiplier=1.5,
                                           options=_options(digits))
    assert again == metrics
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in mtimes} == mtimes


def test_an_interrupted_retraining_resumes_to_the_same_results(winner, digits, tmp_path):
    """A run stopped after training finished and before its metrics were
    written (and one leaving a half-written SavedModel and metrics file)
    resumes to the uninterrupted metrics, the last step's accuracy
    included, and leaves no temporaries."""
    import shutil
    out, metrics = winner
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    os.remove(os.path.join(copy, "metrics.json"))
    shutil.rmtree(os.path.join(copy, "saved_model"))
    os.makedirs(os.path.join(copy, "saved_model.tmp-0badf00d", "variables"))
    with open(os.path.join(copy, "metrics.json.tmp-0badf00d"), "w") as f:
        f.write('{"test_acc')
    again = retrain_lib.retrain_and_export(SPACE, WINNER, digits, copy, CFG, width_multiplier=1.5,
                                           options=_options(digits),
                                           weight_decay=1e-4, extra_metrics={"rank": 1, "id": "abc"})
    assert again["train_accuracy_last_step"] == metrics["train_accuracy_last_step"] is not None
    assert {k: v for k, v in again.items() if k != "train_seconds"} == {
        k: v for k, v in metrics.items() if k != "train_seconds"}
    assert sorted(os.listdir(copy)) == sorted(os.listdir(out))
    assert _leftovers(copy) == []


def test_a_directory_of_another_architecture_is_retrained_for_this_one(winner, digits, tmp_path):
    """``winners/1`` after the winners changed (a grown --num_candidates):
    the finished run (and a checkpoint of another shape) of the other
    architecture is replaced, not reported as this one's."""
    import shutil
    out, metrics = winner
    other = CellArchitecture((Block((0,), ("sep5x5",)), Block((1, 2), ("identity", "maxpool3x3"))))
    for finished in (True, False):
        copy = str(tmp_path / f"copy_{finished}")
        shutil.copytree(out, copy)
        if not finished:   # stopped mid-training: a checkpoint only
            os.remove(os.path.join(copy, "metrics.json"))
        got = retrain_lib.retrain_and_export(SPACE, other, digits, copy, CFG, width_multiplier=1.5,
                                             options=_options(digits), weight_decay=1e-4)
        assert got["params"] == CellSearchSpace(num_cells=2, num_stages=2, filters=6, num_blocks=2).count_params(
            other, input_shape=(6, 6, 1), num_classes=10) != metrics["params"]
        assert SPACE.from_json(io_utils.read_json(os.path.join(copy, "architecture.json"))) == other
        assert io_utils.read_json(os.path.join(copy, "metrics.json")) == got
        assert "rank" not in got   # nothing of the other run's metrics is kept


def test_winner_serves_the_datasets_own_images(winner, digits, raw_digits):
    """A client holding the dataset's own 8x8 images gets, from serve /
    serving_default, what the model gives on the pipeline's 6x6 images."""
    out, metrics = winner
    path = os.path.join(out, "saved_model")
    assert digits.image_shape == (6, 6, 1) and digits.source_image_shape == (8, 8, 1)
    assert raw_digits.source_image_shape == raw_digits.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(raw_digits.y_test, digits.y_test)  # same split, row for row
    info = serving_info(path)
    assert info["image_shape"] == [6, 6, 1] and info["source_image_shape"] == [8, 8, 1]

    loaded = tf.saved_model.load(path)
    raw, resized = tf.constant(raw_digits.x_test), tf.constant(digits.x_test)
    # The same resize op (ScaleAndTranslate, CPU only) and rounding, then the same model graph on the
    # same uint8 pixels: bit-identical (on one device; a GPU's convolutions may round differently).
    with tf.device("/CPU:0"):
        expected = loaded.serve_resized(resized).numpy()
        got = loaded.serve(raw).numpy()
        default = loaded.signatures["serving_default"](images=raw)["output_0"].numpy()
        passed_through = loaded.serve(resized).numpy()
        naive = tf.cast(tf.round(tf.image.resize(tf.cast(raw, tf.float32), [6, 6], antialias=False)), tf.uint8)
        near_miss = loaded.serve_resized(naive).numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(default, expected)
    assert metrics["test_accuracy"] == pytest.approx(float(np.mean(got.argmax(-1) == raw_digits.y_test)))
    # Already-resized images pass through serve unchanged.
    np.testing.assert_array_equal(passed_through, expected)
    # The check above tells the pipeline's resize from a near miss (no antialiasing).
    assert not np.array_equal(naive.numpy(), digits.x_test)
    assert np.abs(near_miss - expected).max() > 1e-4

    with pytest.raises((TypeError, ValueError)):
        loaded.serve_resized(raw)  # serve_resized takes 6x6 images only
    with pytest.raises(data_lib.DataError, match="source_image_shape"):
        data_lib.ImageDataset("x", digits.x_test, digits.y_test, digits.x_test, digits.y_test, digits.x_test,
                              digits.y_test, 10, False, source_image_shape=(8, 8, 3))


def _saved_model_cli(*args):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        cli = "saved_model_cli"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([cli, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.integration  # a saved_model_cli subprocess: CI's integration step
def test_saved_model_cli_shows_and_runs_raw_images(winner, digits, raw_digits, tmp_path):
    path = os.path.join(winner[0], "saved_model")
    shown = _saved_model_cli("show", "--dir", path, "--tag_set", "serve", "--all")
    inputs = dict(re.findall(r"signature_def\['(\w+)'\]:\s+The given SavedModel SignatureDef contains the "
                             r"following input\(s\):\s+inputs\['images'\] tensor_info:\s+dtype: DT_UINT8\s+"
                             r"shape: (\([-\d, ]+\))", shown))
    assert inputs == {"serving_default": "(-1, -1, -1, 1)", "serve": "(-1, -1, -1, 1)",
                      "serve_resized": "(-1, 6, 6, 1)"}, shown

    n = 40
    np.save(tmp_path / "raw.npy", raw_digits.x_test[:n])
    _saved_model_cli("run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
                     "--inputs", f"images={tmp_path / 'raw.npy'}", "--outdir", str(tmp_path / "out"))
    cli_probs = np.load(tmp_path / "out" / "output_0.npy")
    loaded = tf.saved_model.load(path)
    with tf.device("/CPU:0"):  # where the CLI ran (CUDA_VISIBLE_DEVICES="")
        expected = loaded.serve_resized(tf.constant(digits.x_test[:n])).numpy()
    assert cli_probs.shape == (n, 10) and cli_probs.dtype == np.float32
    # The CLI runs the same graph in a TF1 session (another process): allow float round-off only.
    np.testing.assert_allclose(cli_probs, expected, rtol=0, atol=1e-6)
