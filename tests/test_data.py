"""Tests for oneshot_tf.data (offline: digits, npz files, a tiny locally built tfds dataset)."""

import json
import time

import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import data as D
from oneshot_tf.data import DataError, ImageDataset, augment_batch, load_dataset, make_tf_dataset


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _digits_raw():
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = np.clip(np.rint(raw.images * 255.0 / 16.0), 0, 255).astype(np.uint8)[..., None]
    return x, raw.target.astype(np.int64)


def _write_npz(tmp_path, fname="d.npz", **arrays):
    path = tmp_path / fname
    np.savez(path, **arrays)
    return f"npz:{path}"


def _indexed_images(n, h=5, w=5, c=None, dtype=np.uint8):
    """Images whose every pixel equals their index (so splits can be traced back)."""
    shape = (n, h, w) if c is None else (n, h, w, c)
    x = np.broadcast_to(np.arange(n).reshape((n,) + (1,) * (len(shape) - 1)), shape)
    return np.ascontiguousarray(x).astype(dtype)


def _good_npz(n=30, n_test=8):
    return dict(x_train=_indexed_images(n), y_train=np.arange(n) % 3,
                x_test=_indexed_images(n_test), y_test=np.arange(n_test) % 3)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_sizes():
    ds = load_dataset("digits")
    assert isinstance(ds, ImageDataset)
    assert ds.image_shape == (8, 8, 1)
    assert ds.num_classes == 10 and ds.natural_images is False
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (8, 8, 1)
        assert y.dtype == np.int64 and y.shape == (len(x),)
    sizes = (len(ds.x_train), len(ds.x_val), len(ds.x_test))
    assert sum(sizes) == 1797
    assert sizes == (1797 - 180 - 359, 180, 359)  # 10% validation, 20% test
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    s = ds.summary()
    assert json.loads(json.dumps(s)) == s
    assert s["splits"] == {"train": sizes[0], "validation": sizes[1], "test": sizes[2]}
    assert s["image_shape"] == [8, 8, 1] and s["num_classes"] == 10 and s["name"] == "digits"


def test_digits_splits_follow_seeded_permutation_and_are_disjoint():
    x, y = _digits_raw()
    ds = load_dataset("digits", seed=3)
    tr, va, te = D.split_indices(1797, validation_size=None, test_size=0.2, seed=3)
    sets = [set(tr.tolist()), set(va.tolist()), set(te.tolist())]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(range(1797))
    np.testing.assert_array_equal(ds.x_train, x[tr])
    np.testing.assert_array_equal(ds.y_train, y[tr])
    np.testing.assert_array_equal(ds.x_val, x[va])
    np.testing.assert_array_equal(ds.y_val, y[va])
    np.testing.assert_array_equal(ds.x_test, x[te])
    np.testing.assert_array_equal(ds.y_test, y[te])


def test_digits_determinism_and_seed_dependence():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.shape == c.x_train.shape
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.y_test, c.y_test)


def test_digits_custom_sizes_and_truncation():
    ds = load_dataset("digits", validation_size=100, test_size=0.5, max_train_examples=50)
    assert len(ds.x_val) == 100
    assert len(ds.x_test) == 899  # 0.5 * 1797 = 898.5, rounded half up
    assert len(ds.x_train) == 50
    full = load_dataset("digits", validation_size=100, test_size=0.5)
    np.testing.assert_array_equal(ds.x_train, full.x_train[:50])
    np.testing.assert_array_equal(ds.x_val, full.x_val)


def test_digits_resize_to_16():
    ds = load_dataset("digits", image_size=16)
    assert ds.image_shape == (16, 16, 1)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.uint8 and x.shape[1:] == (16, 16, 1)
    small = load_dataset("digits")
    # Bright/dark structure survives the resize: mean intensity is roughly preserved.
    assert abs(float(ds.x_train.mean()) - float(small.x_train.mean())) < 5.0
    same = load_dataset("digits", image_size=8)
    np.testing.assert_array_equal(same.x_train, small.x_train)


def test_channel_stats_match_numpy():
    ds = load_dataset("digits")
    mean, std = ds.channel_stats()
    assert isinstance(mean[0], float) and isinstance(std[0], float) and len(mean) == 1
    ref = ds.x_train.astype(np.float64)
    assert mean[0] == pytest.approx(ref.mean(), rel=1e-12)
    assert std[0] == pytest.approx(ref.std(), rel=1e-9)
    const = ImageDataset("c", np.full((4, 2, 2, 3), 7, np.uint8), np.zeros(4, np.int64),
                         np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, np.int64),
                         np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, np.int64), 1, True)
    m, s = const.channel_stats()
    assert m == [7.0, 7.0, 7.0] and s == [1e-3, 1e-3, 1e-3]


def test_digits_label_out_of_range_reported(monkeypatch):
    import sklearn.datasets
    from sklearn.utils import Bunch

    real = sklearn.datasets.load_digits()
    target = real.target.copy()
    target[:] = 10  # every split gets an out-of-range label
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: Bunch(images=real.images, target=target))
    with pytest.raises(DataError, match=r"'digits'.*'train'.*labels out of range.*label 10.*num_classes=10"):
        load_dataset("digits")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(validation_size=0), r"'validation'.*validation_size must be >= 1"),
    (dict(validation_size=-3), r"'validation'.*validation_size must be >= 1"),
    (dict(validation_size=1.0), r"'validation'.*fraction must be in \(0, 1\)"),
    (dict(validation_size=1.5), r"'validation'.*fraction must be in \(0, 1\)"),
    (dict(test_size=0.0), r"'test'.*fraction must be in \(0, 1\)"),
    (dict(test_size="lots"), r"'test'.*test_size must be an int count or a float fraction"),
    (dict(validation_size=True), r"validation_size must be an int count"),
    (dict(validation_size=1000, test_size=797), r"'train'.*empty split.*leaves no training examples"),
    (dict(validation_size=1e-5), r"'validation'.*empty split.*gives 0 examples"),
    (dict(image_size=0), r"image_size must be a positive int"),
    (dict(max_train_examples=0), r"max_train_examples must be a positive int"),
])
def test_bad_split_arguments(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        load_dataset("digits", **kwargs)


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def test_npz_round_trip_hw_uint8_with_test(tmp_path):
    arrays = _good_npz(n=30, n_test=8)
    name = _write_npz(tmp_path, **arrays)
    ds = load_dataset(name, seed=5)
    assert ds.image_shape == (5, 5, 1) and ds.natural_images is False
    assert ds.num_classes == 3
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (27, 3, 8)
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    tr, va, _ = D.split_indices(30, validation_size=None, test_size=0, seed=5)
    np.testing.assert_array_equal(ds.x_train[:, 0, 0, 0], tr)
    np.testing.assert_array_equal(ds.x_val[:, 0, 0, 0], va)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"][tr])
    assert not set(tr.tolist()) & set(va.tolist())
    again = load_dataset(name, seed=5)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_npz_round_trip_hwc_float01_carves_test(tmp_path):
    n = 40
    rng = np.random.default_rng(0)
    x = rng.random((n, 4, 4, 3)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(n) / 255.0  # traceable index in a corner pixel
    x[0, 1, 1, :] = 1.0
    y = np.arange(n) % 7
    name = _write_npz(tmp_path, x_train=x, y_train=y)
    ds = load_dataset(name, validation_size=0.25)  # test defaults to 10%
    assert ds.natural_images is True and ds.image_shape == (4, 4, 3)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (26, 10, 4)
    assert ds.num_classes == 7
    expect = np.clip(np.rint(x.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    all_x = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
    idx = all_x[:, 0, 0, 0].astype(int)
    assert sorted(idx.tolist()) == list(range(n))
    np.testing.assert_array_equal(all_x, expect[idx])
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_val, ds.y_test]), y[idx])


def test_npz_other_pixel_types(tmp_path):
    x16 = _indexed_images(20, c=1, dtype=np.int16) * 10  # 0..190, int16 -> kept values
    ds = load_dataset(_write_npz(tmp_path, "a.npz", x_train=x16, y_train=np.zeros(20, np.int32)),
                      test_size=2, validation_size=2)
    assert ds.x_train.dtype == np.uint8
    assert sorted(np.concatenate([ds.x_train, ds.x_val, ds.x_test])[:, 0, 0, 0].tolist()) == \
        sorted(x16[:, 0, 0, 0].tolist())
    xf = np.linspace(0, 255, 20 * 9).reshape(20, 3, 3).astype(np.float64)  # float beyond 1 -> not scaled
    ds = load_dataset(_write_npz(tmp_path, "b.npz", x_train=xf, y_train=np.arange(20) % 2,
                                 x_test=xf[:3], y_test=np.array([0, 1, 1])))
    assert ds.x_test.max() == np.rint(xf[:3].max())
    np.testing.assert_array_equal(ds.x_test[..., 0], np.rint(xf[:3]).astype(np.uint8))


def test_npz_resize(tmp_path):
    name = _write_npz(tmp_path, **_good_npz())
    ds = load_dataset(name, image_size=10)
    assert ds.image_shape == (10, 10, 1)
    # constant images stay constant after antialiased bilinear resizing
    np.testing.assert_array_equal(ds.x_test[:, :, :, 0].max(axis=(1, 2)), np.arange(8))
    np.testing.assert_array_equal(ds.x_test[:, :, :, 0].min(axis=(1, 2)), np.arange(8))


def _bad(**overrides):
    arrays = _good_npz()
    for k, v in overrides.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    return arrays


BAD_NPZ = [
    ("rank2", _bad(x_train=np.zeros((30, 5), np.uint8)), r"'train'.*rank 3 .* or 4 .*got rank 2"),
    ("rank5", _bad(x_test=np.zeros((8, 5, 5, 1, 1), np.uint8)), r"'test'.*got rank 5"),
    ("channels", _bad(x_train=np.zeros((30, 5, 5, 2), np.uint8)), r"'train'.*unsupported channel count 2"),
    ("float labels", _bad(y_train=np.zeros(30, np.float32)), r"'train'.*labels must be integers"),
    ("fractional labels", _bad(y_test=np.full(8, 0.5)), r"'test'.*labels must be integers"),
    ("string labels", _bad(y_train=np.array(["a"] * 30)), r"'train'.*labels must be integers"),
    ("labels 2d", _bad(y_train=np.zeros((30, 1), np.int64)), r"'train'.*labels must be 1-D.*\(30, 1\)"),
    ("negative label", _bad(y_test=np.array([0, 1, 2, -1, 0, 0, 0, 0])),
     r"'test'.*labels out of range.*negative label -1"),
    ("length mismatch", _bad(y_train=np.zeros(29, np.int64)), r"'train'.*mismatched lengths.*30 images but 29"),
    ("empty train", _bad(x_train=np.zeros((0, 5, 5), np.uint8), y_train=np.zeros(0, np.int64)),
     r"'train'.*empty split"),
    ("empty test", _bad(x_test=np.zeros((0, 5, 5), np.uint8), y_test=np.zeros(0, np.int64)),
     r"'test'.*empty split"),
    ("empty after carving", _bad(x_train=np.zeros((3, 5, 5), np.uint8), y_train=np.zeros(3, np.int64)),
     r"'validation'.*empty split"),
    ("nan", _bad(x_train=np.where(np.arange(30)[:, None, None] == 4, np.nan, 0.5)), r"'train'.*NaN pixels"),
    ("inf", _bad(x_test=np.where(np.arange(8)[:, None, None] == 1, np.inf, 0.5)), r"'test'.*inf pixels"),
    ("int out of range", _bad(x_train=np.full((30, 5, 5), 300, np.int32)),
     r"'train'.*pixels out of range.*300"),
    ("negative pixels", _bad(x_test=np.full((8, 5, 5), -2, np.int16)), r"'test'.*pixels out of range"),
    ("float out of range", _bad(x_train=np.full((30, 5, 5), 255.5)), r"'train'.*pixels out of range"),
    ("bool pixels", _bad(x_train=np.ones((30, 5, 5), bool)), r"'train'.*pixels must be numeric"),
    ("shape mismatch", _bad(x_test=np.zeros((8, 6, 6), np.uint8)), r"'test'.*image shape .* differs"),
    ("missing x_train", _bad(x_train=None), r"missing required key 'x_train'"),
    ("missing y_train", _bad(y_train=None), r"missing required key 'y_train'"),
    ("missing y_test", _bad(y_test=None), r"missing key 'y_test'"),
    ("object array", _bad(x_train=np.array([None] * 30, dtype=object)), r"x_train.*pickle"),
]


@pytest.mark.parametrize("arrays, pattern", [b[1:] for b in BAD_NPZ], ids=[b[0] for b in BAD_NPZ])
def test_npz_bad_data_raises_data_error(tmp_path, arrays, pattern):
    name = _write_npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(name)
    assert name in str(info.value)  # message names the dataset


def test_npz_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=r"npz file not found.*nope\.npz"):
        load_dataset(f"npz:{missing}")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match=r"cannot read npz file.*junk\.npz"):
        load_dataset(f"npz:{junk}")
    with pytest.raises(DataError, match=r"empty npz path"):
        load_dataset("npz:")


def test_image_dataset_rejects_bad_arrays():
    z = np.zeros((2, 3, 3, 1), np.uint8)
    lab = np.zeros(2, np.int64)
    with pytest.raises(DataError, match=r"'validation'.*uint8"):
        ImageDataset("x", z, lab, z.astype(np.float32), lab, z, lab, 2, False)
    with pytest.raises(DataError, match=r"'test'.*2 images but 3 labels"):
        ImageDataset("x", z, lab, z, lab, z, np.zeros(3, np.int64), 2, False)


# ---------------------------------------------------------------------------
# tensorflow-datasets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "mnist", "no_such_dataset_xyz"])
def test_tfds_unavailable_offline_fails_fast(tmp_path, name):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir=str(tmp_path))
    msg = str(info.value)
    assert "--data_dir" in msg and "not available offline" in msg
    assert str(tmp_path) in msg and f"tfds build {name}" in msg
    assert time.monotonic() - start < 10


def test_tfds_split_specs():
    assert D._tfds_split_specs("cifar10", 50000, True, None, None) == ("train[:45000]", "train[45000:]", "test")
    assert D._tfds_split_specs("cifar100", 50000, True, None, 0.3) == ("train[:45000]", "train[45000:]", "test")
    assert D._tfds_split_specs("cifar10", 50000, True, 1000, None) == ("train[:49000]", "train[49000:]", "test")
    assert D._tfds_split_specs("mnist", 60000, True, None, None) == ("train[:54000]", "train[54000:]", "test")
    assert D._tfds_split_specs("foo", 100, False, 0.2, 10) == ("train[:70]", "train[80:]", "train[70:80]")
    with pytest.raises(DataError, match=r"'foo'.*'validation'.*fraction"):
        D._tfds_split_specs("foo", 100, True, 2.0, None)


_TINY_BUILDER = []


def _tiny_tfds_builder_class(tfds):
    """Registers (once per process) a tiny 6x6x3, 4-class tfds dataset built from a generator."""
    if _TINY_BUILDER:
        return _TINY_BUILDER[0]

    class OneshotTfTinyImages(tfds.core.GeneratorBasedBuilder):
        # A single-part module name keeps tfds from resolving package resources
        # (which needs the optional `importlib_resources` package).
        __module__ = "oneshot_tf_test_builder"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(6, 6, 3)),
                    "label": tfds.features.ClassLabel(num_classes=4)}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40, 0), "test": self._generate_examples(12, 100)}

        def _generate_examples(self, n, offset):
            for i in range(n):
                yield str(i), {"image": np.full((6, 6, 3), i + offset, np.uint8), "label": i % 4}

    _TINY_BUILDER.append(OneshotTfTinyImages)
    return OneshotTfTinyImages


def test_tfds_prepared_local_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    _tiny_tfds_builder_class(tfds)
    name = "oneshot_tf_tiny_images"
    with pytest.raises(DataError, match=r"not available offline.*--data_dir"):
        load_dataset(name, data_dir=str(tmp_path))
    builder = tfds.builder(name, data_dir=str(tmp_path))
    builder.download_and_prepare()

    ds = load_dataset(name, data_dir=str(tmp_path))
    assert ds.num_classes == 4 and ds.natural_images is True and ds.image_shape == (6, 6, 3)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (36, 4, 12)
    order = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1, as_supervised=True))[0][:, 0, 0, 0]
    np.testing.assert_array_equal(ds.x_train[:, 0, 0, 0], order[:36])
    np.testing.assert_array_equal(ds.x_val[:, 0, 0, 0], order[36:])  # validation = last 10% of train
    np.testing.assert_array_equal(ds.y_train, ds.x_train[:, 0, 0, 0] % 4)
    assert sorted(ds.x_test[:, 0, 0, 0].tolist()) == list(range(100, 112))

    small = load_dataset(name, data_dir=str(tmp_path), validation_size=10, image_size=3, max_train_examples=5)
    assert (len(small.x_train), len(small.x_val), len(small.x_test)) == (5, 10, 12)
    assert small.image_shape == (3, 3, 3)


# ---------------------------------------------------------------------------
# make_tf_dataset / augment_batch
# ---------------------------------------------------------------------------


def _toy(n=50, h=6, w=6, c=1):
    return _indexed_images(n, h, w, c), (np.arange(n) % 5).astype(np.int64)


def test_make_tf_dataset_batches_and_dtypes():
    x, y = _toy()
    ds = make_tf_dataset(x, y, 16, training=False)
    spec = ds.element_spec
    assert spec[0].dtype == tf.uint8 and spec[1].dtype == tf.int32
    assert tuple(spec[0].shape) == (16, 6, 6, 1) and tuple(spec[1].shape) == (16,)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 3  # 50 // 16 with drop_remainder
    xs = np.concatenate([b[0] for b in batches])
    ys = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(xs, x[:48])  # evaluation keeps order
    np.testing.assert_array_equal(ys, y[:48])

    keep = list(make_tf_dataset(x, y, 16, training=False, drop_remainder=False).as_numpy_iterator())
    assert [len(b[1]) for b in keep] == [16, 16, 16, 2]


def test_make_tf_dataset_training_shuffles_deterministically():
    x, y = _toy()
    ds = make_tf_dataset(x, y, 10, training=True, seed=1, drop_remainder=False)
    first = np.concatenate([b[0][:, 0, 0, 0] for b in ds.as_numpy_iterator()])
    assert sorted(first.tolist()) == list(range(50))
    assert not np.array_equal(first, np.arange(50))
    # repeated: every epoch is a permutation, a different one each epoch
    rep = make_tf_dataset(x, y, 10, training=True, seed=1, repeat=True)
    epochs = np.concatenate([b[0][:, 0, 0, 0] for b in rep.take(10).as_numpy_iterator()]).reshape(2, 50)
    np.testing.assert_array_equal(epochs[0], first)
    assert sorted(epochs[1].tolist()) == list(range(50))
    assert not np.array_equal(epochs[0], epochs[1])
    # the order depends on the seed argument alone, not on TensorFlow's global seed
    tf.random.set_seed(1234)
    np.testing.assert_array_equal(first, np.concatenate(
        [b[0][:, 0, 0, 0] for b in make_tf_dataset(x, y, 10, training=True, seed=1,
                                                   drop_remainder=False).as_numpy_iterator()]))
    ds_again = make_tf_dataset(x, y, 10, training=True, seed=1, drop_remainder=False)
    np.testing.assert_array_equal(first, np.concatenate([b[0][:, 0, 0, 0] for b in ds_again.as_numpy_iterator()]))
    other = make_tf_dataset(x, y, 10, training=True, seed=2, drop_remainder=False)
    assert not np.array_equal(first, np.concatenate([b[0][:, 0, 0, 0] for b in other.as_numpy_iterator()]))
    # labels travel with their images
    for bx, by in make_tf_dataset(x, y, 10, training=True, seed=1).as_numpy_iterator():
        np.testing.assert_array_equal(by, bx[:, 0, 0, 0] % 5)


def test_make_tf_dataset_repeat():
    x, y = _toy(n=20)
    ds = make_tf_dataset(x, y, 8, training=True, repeat=True)
    got = list(ds.take(7).as_numpy_iterator())  # more than one epoch (2 batches/epoch)
    assert len(got) == 7 and all(b[0].shape == (8, 6, 6, 1) for b in got)


def test_make_tf_dataset_batch_too_large():
    x, y = _toy(n=10)
    with pytest.raises(DataError, match=r"batch size 64 is larger than the 10 examples of split 'val'"):
        make_tf_dataset(x, y, 64, training=False, name="val")
    ds = make_tf_dataset(x, y, 64, training=False, drop_remainder=False)
    assert [b[0].shape[0] for b in ds.as_numpy_iterator()] == [10]


@pytest.mark.parametrize("x, y, pattern", [
    (np.zeros((4, 3, 3, 1), np.float32), np.zeros(4, np.int64), r"images must be uint8"),
    (np.zeros((4, 3, 3), np.uint8), np.zeros(4, np.int64), r"rank 4"),
    (np.zeros((4, 3, 3, 1), np.uint8), np.zeros(4, np.float32), r"labels must be integers"),
    (np.zeros((4, 3, 3, 1), np.uint8), np.zeros(3, np.int64), r"mismatched lengths"),
])
def test_make_tf_dataset_bad_inputs(x, y, pattern):
    with pytest.raises(DataError, match=pattern):
        make_tf_dataset(x, y, 2, training=True)


def _candidates(img, pad, flip):
    """All outputs the pad+crop(+flip) augmentation may produce for one HxWxC image."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    out = []
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[oy:oy + h, ox:ox + w]
            out.append(("plain", oy - pad, ox - pad, crop))
            if flip:
                out.append(("flip", oy - pad, ox - pad, crop[:, ::-1]))
    return out


def test_augmentation_crop_shifts_and_flip_mirrors():
    pad, h, w = 2, 8, 8
    img = np.zeros((h, w, 1), np.uint8)
    img[3, 1, 0] = 255  # single bright, off-centre pixel
    x = np.repeat(img[None], 64, axis=0)
    y = np.zeros(64, np.int64)
    for flip in (False, True):
        ds = make_tf_dataset(x, y, 32, training=True, augment=True, flip=flip, pad=pad, seed=7)
        out = np.concatenate([b[0] for b in ds.as_numpy_iterator()])
        assert out.shape == x.shape and out.dtype == np.uint8
        cands = _candidates(img, pad, flip)
        kinds, shifts = set(), set()
        for o in out:
            match = [c for c in cands if np.array_equal(c[3], o)]
            assert match, "augmented image is not a padded crop (or its mirror) of the input"
            kinds.add(match[0][0])
            shifts.add(match[0][1:3])
            # the bright pixel moved by at most `pad` (mirrored column when flipped)
            ys_, xs_ = np.nonzero(o[..., 0])
            for r, cidx in zip(ys_, xs_):
                col = cidx if match[0][0] == "plain" else w - 1 - cidx
                assert abs(r - 3) <= pad and abs(col - 1) <= pad
        assert len(shifts) > 5  # crops really vary
        assert kinds == ({"plain", "flip"} if flip else {"plain"})


def test_augment_batch_direct():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(1, 4, 5, 3)
    batch = np.repeat(img, 6, axis=0)
    same = augment_batch(batch, tf.constant([1, 2], tf.int64), pad=0, flip=False).numpy()
    np.testing.assert_array_equal(same, batch)
    a = augment_batch(batch, tf.constant([1, 2], tf.int64), pad=1, flip=True).numpy()
    b = augment_batch(batch, tf.constant([1, 2], tf.int64), pad=1, flip=True).numpy()
    c = augment_batch(batch, tf.constant([1, 3], tf.int64), pad=1, flip=True).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == batch.shape and a.dtype == np.uint8
    assert not np.array_equal(a, c)


def test_augmented_pipeline_determinism():
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = np.arange(40) % 4

    def run(seed, ds=None):
        ds = ds or make_tf_dataset(x, y, 8, training=True, augment=True, flip=True, seed=seed)
        return np.concatenate([b[0] for b in ds.as_numpy_iterator()])

    first = run(3)
    np.testing.assert_array_equal(first, run(3))  # same seed, fresh pipeline: identical
    rep = make_tf_dataset(x, y, 8, training=True, augment=True, flip=True, seed=3, repeat=True)
    two = np.concatenate([b[0] for b in rep.take(10).as_numpy_iterator()])
    np.testing.assert_array_equal(two[:40], first)
    assert not np.array_equal(two[:40], two[40:])  # next epoch: new order / augmentation
    assert not np.array_equal(first, run(4))


@pytest.mark.parametrize("augment", [False, True])
def test_skip_batches_equals_skipping_the_stream(augment):
    """A resumed run starts at batch k: same images, labels and augmentation
    as batch k of the full stream (across an epoch boundary too)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)
    y = rng.integers(0, 10, 20)
    kw = dict(training=True, augment=augment, flip=True, seed=3, repeat=True)
    full = list(make_tf_dataset(x, y, 6, **kw).take(9).as_numpy_iterator())
    skipped = list(make_tf_dataset(x, y, 6, skip_batches=4, **kw).take(5).as_numpy_iterator())
    for (a, b), (c, d) in zip(full[4:], skipped):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
