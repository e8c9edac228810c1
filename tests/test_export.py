"""Tests for oneshot_tf.export and retrain.retrain_and_export."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import data as data_lib
from oneshot_tf import io_utils
from oneshot_tf import retrain as retrain_lib
from oneshot_tf.cell_space import Block, CellArchitecture, CellSearchSpace
from oneshot_tf.export import export_saved_model, load_serving
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
                                 mean=[120.0, 110.0, 100.0], std=[60.0, 50.0, 40.0])
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
    batch_stats = tf.nn.softmax(model(tf.constant(x), training=True), axis=-1).numpy()
    assert not np.allclose(expected, batch_stats, atol=1e-4)  # the check below can tell them apart

    loaded = tf.saved_model.load(path)
    got = loaded.serve(tf.constant(x)).numpy()
    assert got.shape == (7, CLASSES)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # Input signature: a batch of raw uint8 NHWC images of any size.
    (spec,) = loaded.serve.input_signature
    assert spec.dtype == tf.uint8
    assert spec.shape.as_list() == [None, *SHAPE]
    sig = loaded.signatures["serve"]
    (sig_spec,) = sig.structured_input_signature[1].values()
    assert sig_spec.dtype == tf.uint8 and sig_spec.shape.as_list() == [None, *SHAPE]
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.constant(x.astype(np.float32)))
    # Any batch size, including one image.
    assert loaded.serve(tf.constant(x[:1])).shape == (1, CLASSES)

    assert _leftovers(tmp_path) == []


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
    return data_lib.load_dataset("digits", image_size=8, validation_size=64)


def test_retrain_and_export_writes_results_and_is_idempotent(tmp_path, digits, monkeypatch):
    space = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
    arch = CellArchitecture((Block((1,), ("sep3x3",)), Block((0, 2), ("identity", "avgpool3x3"))))
    out = str(tmp_path / "winner")
    cfg = TrainConfig(steps=3, batch_size=32, learning_rate=0.05, checkpoint_every=2, log_every=1,
                      verbose=False)
    keras.utils.set_random_seed(0)
    metrics = retrain_lib.retrain_and_export(space, arch, digits, out, cfg, filters=6, bn_momentum=0.5,
                                             weight_decay=1e-4, extra_metrics={"rank": 1, "id": "abc"})

    assert sorted(os.listdir(out)) == ["architecture.json", "ckpt", "metrics.json", "saved_model", "train"]
    with open(os.path.join(out, "architecture.json")) as f:
        assert space.from_json(json.load(f)) == arch
    assert io_utils.read_json(os.path.join(out, "metrics.json")) == metrics

    wide = CellSearchSpace(num_cells=2, num_stages=2, filters=6, num_blocks=2)
    assert metrics["filters"] == 6
    assert metrics["params"] == wide.count_params(arch, input_shape=(8, 8, 1), num_classes=10)
    assert metrics["flops"] == wide.count_flops(arch, input_shape=(8, 8, 1), num_classes=10)
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
    again = retrain_lib.retrain_and_export(space, arch, digits, out, cfg, filters=6, bn_momentum=0.5)
    assert again == metrics
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in mtimes} == mtimes
