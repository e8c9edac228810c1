"""Image classification data for one-shot architecture search.

Three kinds of sources are supported by :func:`load_dataset`:

* ``"digits"`` -- scikit-learn's bundled 8x8 handwritten digits (no network,
  the embedded default used by tests and smoke runs);
* ``"npz:PATH"`` -- a NumPy ``.npz`` archive (read through ``tf.io.gfile`` so
  ``gs://`` paths work; pickled objects are never loaded);
* any other name -- a locally *prepared* tensorflow-datasets dataset (never
  downloaded here).

Every split is validated and any problem is reported as a :class:`DataError`
whose message names the dataset, the split and the problem.

:func:`make_tf_dataset` turns a split into a batched ``tf.data`` pipeline with
deterministic shuffling and the standard CIFAR augmentation (zero-pad, random
crop, optional horizontal flip) computed on uint8 images with stateless ops.
"""

from __future__ import annotations

import dataclasses
import io
import math
import numbers
import os
from typing import Optional, Tuple, Union

import numpy as np

__all__ = [
    "DataError",
    "ImageDataset",
    "load_dataset",
    "make_tf_dataset",
    "augment_batch",
    "resize_images",
    "split_indices",
]

SizeSpec = Optional[Union[int, float]]

# Paper split for CIFAR: the last 5,000 training images are held out.
_CIFAR_NAMES = ("cifar10", "cifar100")
_CIFAR_VALIDATION = 5000
_SUPPORTED_CHANNELS = (1, 3, 4)
_RESIZE_CHUNK = 512
_STATS_CHUNK = 4096


class DataError(ValueError):
    """Bad or unavailable data; the message names the dataset/split/problem."""


def _err(dataset: str, split: Optional[str], problem: str) -> DataError:
    if split is None:
        return DataError(f"dataset {dataset!r}: {problem}")
    return DataError(f"dataset {dataset!r}, split {split!r}: {problem}")


# ---------------------------------------------------------------------------
# Dataset container
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train/validation/test splits of an image classification dataset.

    Images are uint8 NHWC arrays, labels int64 vectors.  ``natural_images``
    is True for photographs (horizontal-flip augmentation makes sense) and
    False for e.g. digits.  ``source_image_shape`` is the (H, W, C) of the
    images before ``load_dataset(image_size=...)`` resized them (default:
    ``image_shape``, i.e. not resized).
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_val: np.ndarray = dataclasses.field(repr=False)
    y_val: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    natural_images: bool
    source_image_shape: Optional[Tuple[int, int, int]] = None

    def __post_init__(self):
        # Cheap structural checks only (full validation happens in loaders).
        shape = None
        for split, x, y in self._splits():
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
                raise _err(self.name, split, "images must be a uint8 array of rank 4 (N, H, W, C)")
            if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype.kind not in "iu":
                raise _err(self.name, split, "labels must be a 1-D integer array")
            if len(x) != len(y):
                raise _err(self.name, split, f"{len(x)} images but {len(y)} labels")
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise _err(self.name, split, f"image shape {x.shape[1:]} differs from train image shape {shape}")
        if int(self.num_classes) < 1:
            raise _err(self.name, None, f"num_classes must be >= 1, got {self.num_classes}")
        source = self.image_shape if self.source_image_shape is None else self.source_image_shape
        source = tuple(source) if isinstance(source, (tuple, list)) else ()
        if (len(source) != 3 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
                                    for d in source) or source[-1] != shape[-1]):
            raise _err(self.name, None, f"source_image_shape must be (H, W, {shape[-1]}) of positive ints, "
                                        f"got {self.source_image_shape!r}")
        object.__setattr__(self, "source_image_shape", tuple(int(d) for d in source))

    def _splits(self):
        return (
            ("train", self.x_train, self.y_train),
            ("validation", self.x_val, self.y_val),
            ("test", self.x_test, self.y_test),
        )

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def summary(self) -> dict:
        """JSON-able description of the dataset."""
        return {
            "name": self.name,
            "num_classes": int(self.num_classes),
            "image_shape": list(self.image_shape),
            "natural_images": bool(self.natural_images),
            "splits": {
                "train": int(len(self.x_train)),
                "validation": int(len(self.x_val)),
                "test": int(len(self.x_test)),
            },
        }

    def channel_stats(self) -> Tuple[list, list]:
        """Per-channel mean and (population) std of ``x_train`` in [0, 255] units.

        Computed in float64 in chunks (two passes); std is floored at 1e-3.
        """
        x = self.x_train
        c = x.shape[-1]
        n = x.shape[0] * x.shape[1] * x.shape[2]
        total = np.zeros(c, np.float64)
        for i in range(0, len(x), _STATS_CHUNK):
            total += x[i:i + _STATS_CHUNK].astype(np.float64).sum(axis=(0, 1, 2))
        mean = total / n
        sq = np.zeros(c, np.float64)
        for i in range(0, len(x), _STATS_CHUNK):
            d = x[i:i + _STATS_CHUNK].astype(np.float64) - mean
            sq += (d * d).sum(axis=(0, 1, 2))
        std = np.maximum(np.sqrt(sq / n), 1e-3)
        return [float(v) for v in mean], [float(v) for v in std]


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_images(dataset: str, split: str, x) -> np.ndarray:
    """Validates raw images of one split; returns them as NHWC (channel axis added)."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:  # pragma: no cover - defensive
            raise _err(dataset, split, f"images could not be converted to an array ({e})") from None
    if x.dtype.kind not in "iuf":
        raise _err(dataset, split, f"pixels must be numeric (integer or float), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    elif x.ndim != 4:
        raise _err(
            dataset, split,
            f"images must have rank 3 (N, H, W) or 4 (N, H, W, C) including the batch axis, "
            f"got rank {x.ndim} with shape {x.shape}")
    if x.shape[-1] not in _SUPPORTED_CHANNELS:
        raise _err(dataset, split,
                   f"unsupported channel count {x.shape[-1]} (shape {x.shape}); expected one of "
                   f"{_SUPPORTED_CHANNELS}")
    if x.shape[0] == 0:
        raise _err(dataset, split, "empty split (0 examples)")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise _err(dataset, split, f"images have zero height or width (shape {x.shape})")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            bad = x[~finite]
            kind = "NaN" if np.isnan(bad).any() else "inf"
            raise _err(dataset, split, f"{kind} pixels ({bad.size} non-finite values)")
    if x.dtype != np.uint8:
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 255:
            raise _err(dataset, split, f"pixels out of range: values span [{lo}, {hi}], expected within [0, 255]")
    return x


def _check_labels(dataset: str, split: str, y, n_images: int) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.ndim != 1:
        raise _err(dataset, split, f"labels must be 1-D, got shape {y.shape} (use y.reshape(-1))")
    if y.dtype.kind not in "iu":
        raise _err(dataset, split, f"labels must be integers, got dtype {y.dtype}")
    if len(y) != n_images:
        raise _err(dataset, split, f"mismatched lengths: {n_images} images but {len(y)} labels")
    if len(y) == 0:
        raise _err(dataset, split, "empty split (0 labels)")
    if y.dtype.kind == "u" and y.max() > np.iinfo(np.int64).max:
        raise _err(dataset, split, f"labels out of range: max label {y.max()} does not fit int64")
    if y.dtype.kind == "i" and y.min() < 0:
        raise _err(dataset, split, f"labels out of range: negative label {y.min()}")
    return y.astype(np.int64)


def _check_label_range(dataset: str, split: str, y: np.ndarray, num_classes: int) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = y.min() if y.min() < 0 else y.max()
        raise _err(dataset, split,
                   f"labels out of range: label {bad} outside [0, {num_classes - 1}] "
                   f"(num_classes={num_classes})")


def _check_same_shape(dataset: str, splits) -> None:
    ref_name, ref = splits[0]
    for name, x in splits[1:]:
        if x.shape[1:] != ref.shape[1:]:
            raise _err(dataset, name,
                       f"image shape {x.shape[1:]} differs from {ref_name} image shape {ref.shape[1:]}")


def _to_uint8(x: np.ndarray, scale01: bool) -> np.ndarray:
    """Converts validated pixels to uint8 (floats in [0,1] scaled by 255 when scale01)."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        return x.astype(np.uint8)
    out = np.empty(x.shape, np.uint8)
    flat_in = x.reshape(len(x), -1)
    flat_out = out.reshape(len(x), -1)
    for i in range(0, len(x), _RESIZE_CHUNK):
        v = flat_in[i:i + _RESIZE_CHUNK].astype(np.float64)
        if scale01:
            v = v * 255.0
        flat_out[i:i + _RESIZE_CHUNK] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------
# Split helpers
# ---------------------------------------------------------------------------


def _resolve_size(dataset: str, what: str, value: SizeSpec, n: int, default_fraction: float) -> int:
    """Number of examples for a carved split of ``n`` examples (>= 1)."""
    if value is None:
        count = int(math.floor(default_fraction * n + 0.5))
    elif isinstance(value, (bool, np.bool_)):
        raise _err(dataset, what, f"{what}_size must be an int count or a float fraction in (0, 1), got {value!r}")
    elif isinstance(value, numbers.Integral):
        count = int(value)
        if count < 1:
            raise _err(dataset, what, f"{what}_size must be >= 1, got {count}")
    elif isinstance(value, numbers.Real):
        f = float(value)
        if not (0.0 < f < 1.0):
            raise _err(dataset, what, f"{what}_size as a fraction must be in (0, 1), got {value!r}")
        count = int(math.floor(f * n + 0.5))
    else:
        raise _err(dataset, what, f"{what}_size must be an int count or a float fraction in (0, 1), got {value!r}")
    if count < 1:
        raise _err(dataset, what, f"empty split: {what}_size={value!r} of {n} examples gives 0 examples")
    return count


def split_indices(num_examples: int, *, validation_size: SizeSpec = None, test_size: SizeSpec = 0.2,
                  default_validation: float = 0.1, seed: int = 0,
                  dataset: str = "data") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint (train, validation, test) index arrays over ``range(num_examples)``.

    The permutation is ``np.random.default_rng(seed).permutation(num_examples)``;
    test takes its first ``test`` entries, validation the next ones, train the
    rest.  ``test_size=0`` (int) means no test split (empty test indices).
    Sizes are counts (int) or fractions in (0, 1) of ``num_examples``.
    """
    n = int(num_examples)
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, (bool, np.bool_)) and test_size == 0:
        n_test = 0
    else:
        n_test = _resolve_size(dataset, "test", test_size, n, 0.2)
    n_val = _resolve_size(dataset, "validation", validation_size, n, default_validation)
    if n_test + n_val >= n:
        raise _err(dataset, "train",
                   f"empty split: carving {n_val} validation and {n_test} test examples from "
                   f"{n} examples leaves no training examples")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


def _tfds_split_specs(name: str, num_train: int, has_test: bool, validation_size: SizeSpec,
                      test_size: SizeSpec) -> Tuple[str, str, str]:
    """tfds split strings (train, validation, test) for a dataset with ``num_train`` train examples.

    CIFAR-10/100 default to the paper split (first 45,000 / last 5,000 of
    ``train``).  Validation is the *last* part of ``train``; when the dataset has
    no ``test`` split a test split is carved right before the validation part.
    An existing ``test`` split is used whole (``test_size`` is ignored).
    """
    base = _tfds_base_name(name)
    if validation_size is None and base in _CIFAR_NAMES and num_train > _CIFAR_VALIDATION:
        n_val = _CIFAR_VALIDATION
    else:
        n_val = _resolve_size(name, "validation", validation_size, num_train, 0.1)
    n_test = 0 if has_test else _resolve_size(name, "test", test_size, num_train, 0.1)
    n_train = num_train - n_val - n_test
    if n_train < 1:
        raise _err(name, "train",
                   f"empty split: carving {n_val} validation and {n_test} test examples from "
                   f"{num_train} training examples leaves no training examples")
    train = f"train[:{n_train}]"
    val = f"train[{n_train + n_test}:]"
    test = "test" if has_test else f"train[{n_train}:{n_train + n_test}]"
    return train, val, test


def _tfds_base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0].strip().lower()


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def _load_digits(name: str, validation_size: SizeSpec, test_size: SizeSpec, seed: int):
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = np.rint(raw.images.astype(np.float64) * 255.0 / 16.0)
    x = np.clip(x, 0, 255).astype(np.uint8)[..., np.newaxis]
    y = raw.target.astype(np.int64)
    tr, va, te = split_indices(len(x), validation_size=validation_size,
                               test_size=0.2 if test_size is None else test_size,
                               default_validation=0.1, seed=seed, dataset=name)
    if len(te) == 0:
        raise _err(name, "test", "empty split (test_size=0)")
    return dict(x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va], x_test=x[te], y_test=y[te],
                num_classes=10, natural_images=False)


def _load_npz(name: str, path: str, validation_size: SizeSpec, test_size: SizeSpec, seed: int):
    import tensorflow as tf

    if not path:
        raise _err(name, None, "empty npz path (use 'npz:/path/to/file.npz')")
    try:
        exists = tf.io.gfile.exists(path)
    except Exception as e:
        raise _err(name, None, f"cannot access npz file {path!r} ({type(e).__name__}: {e})") from None
    if not exists:
        raise _err(name, None, f"npz file not found: {path!r}")
    arrays = {}
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            blob = f.read()
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            keys = set(npz.files)
            for key in ("x_train", "y_train"):
                if key not in keys:
                    raise _err(name, None, f"npz file {path!r} is missing required key {key!r} "
                                           f"(found keys: {sorted(keys)})")
            if ("x_test" in keys) != ("y_test" in keys):
                missing = "y_test" if "x_test" in keys else "x_test"
                raise _err(name, None, f"npz file {path!r} is missing key {missing!r} "
                                       f"(x_test and y_test must be given together)")
            for key in ("x_train", "y_train", "x_test", "y_test"):
                if key in keys:
                    try:
                        arrays[key] = npz[key]
                    except ValueError as e:
                        raise _err(name, None, f"npz key {key!r} in {path!r} cannot be loaded without "
                                               f"pickle (object arrays are not allowed): {e}") from None
    except DataError:
        raise
    except Exception as e:
        raise _err(name, None, f"cannot read npz file {path!r} ({type(e).__name__}: {e})") from None

    raw = [("train", arrays["x_train"], arrays["y_train"])]
    if "x_test" in arrays:
        raw.append(("test", arrays["x_test"], arrays["y_test"]))
    checked = []
    for split, x, y in raw:
        x = _check_images(name, split, x)
        y = _check_labels(name, split, y, len(x))
        checked.append((split, x, y))
    _check_same_shape(name, [(s, x) for s, x, _ in checked])

    float_arrays = [x for _, x, _ in checked if x.dtype.kind == "f"]
    scale01 = bool(float_arrays) and max(float(x.max()) for x in float_arrays) <= 1.0
    data = {s: (_to_uint8(x, scale01), y) for s, x, y in checked}

    x_all, y_all = data["train"]
    has_test = "test" in data
    tr, va, te = split_indices(
        len(x_all), validation_size=validation_size,
        test_size=0 if has_test else (0.1 if test_size is None else test_size),
        default_validation=0.1, seed=seed, dataset=name)
    if has_test:
        x_test, y_test = data["test"]
    else:
        x_test, y_test = x_all[te], y_all[te]
    out = dict(x_train=x_all[tr], y_train=y_all[tr], x_val=x_all[va], y_val=y_all[va],
               x_test=x_test, y_test=y_test)
    num_classes = int(max(int(y.max()) for y in (y_all, y_test))) + 1
    out["num_classes"] = num_classes
    out["natural_images"] = x_all.shape[-1] == 3
    return out


def _not_available(name: str, data_dir: Optional[str], detail: str = "") -> DataError:
    if data_dir:
        where = data_dir
    else:
        where = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
        try:
            from tensorflow_datasets.core import constants

            where = constants.get_default_data_dir()
        except Exception:  # pragma: no cover - defensive
            pass
    base = name.split(":")[0]
    msg = (
        f"dataset {name!r} is not available offline in {where}"
        + (f" ({detail})" if detail else "")
        + ". Datasets are never downloaded here: prepare it on a machine with network access with "
        f"`tfds build {base} --data_dir=DIR` (or `python -m tensorflow_datasets.scripts.download_and_prepare "
        f"--datasets={base} --data_dir=DIR`), copy DIR to this machine, then pass --data_dir=DIR. "
        "Built-in offline choices: 'digits' or 'npz:PATH'."
    )
    return DataError(msg)


def _load_tfds(name: str, data_dir: Optional[str], validation_size: SizeSpec, test_size: SizeSpec):
    try:
        import tensorflow_datasets as tfds
    except Exception as e:
        raise _err(name, None, f"tensorflow-datasets is not importable ({type(e).__name__}: {e})") from None

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _not_available(
            name, data_dir,
            f"not a known tensorflow-datasets name or builder unavailable: {type(e).__name__}: {first}"
        ) from None
    try:
        prepared = builder.is_prepared()
    except Exception as e:
        raise _not_available(name, data_dir, f"{type(e).__name__}: {e}") from None
    if not prepared:
        raise _not_available(name, data_dir, "not prepared")

    try:
        info = builder.info
        features = info.features
        if "image" not in features or "label" not in features:
            raise _err(name, None, f"tfds dataset needs 'image' and 'label' features, has {list(features.keys())}")
        num_classes = int(features["label"].num_classes)
        splits = info.splits
        if "train" not in splits:
            raise _err(name, None, f"tfds dataset has no 'train' split (splits: {list(splits.keys())})")
        num_train = int(splits["train"].num_examples)
        has_test = "test" in splits
        supervised = tuple(info.supervised_keys or ()) == ("image", "label")
    except DataError:
        raise
    except Exception as e:
        raise _err(name, None, f"cannot read tfds dataset info ({type(e).__name__}: {e})") from None

    specs = _tfds_split_specs(name, num_train, has_test, validation_size, test_size)
    out = {}
    for split, spec in zip(("train", "validation", "test"), specs):
        try:
            if supervised:
                ds = builder.as_dataset(split=spec, batch_size=-1, as_supervised=True)
                x, y = tfds.as_numpy(ds)
            else:
                ds = builder.as_dataset(split=spec, batch_size=-1)
                d = tfds.as_numpy(ds)
                x, y = d["image"], d["label"]
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise _err(name, split, f"cannot read tfds split {spec!r} ({type(e).__name__}: {first})") from None
        x = _check_images(name, split, np.asarray(x))
        y = _check_labels(name, split, np.asarray(y), len(x))
        _check_label_range(name, split, y, num_classes)
        out[split] = (_to_uint8(x, scale01=False), y)
    _check_same_shape(name, [(s, v[0]) for s, v in out.items()])
    channels = out["train"][0].shape[-1]
    return dict(x_train=out["train"][0], y_train=out["train"][1],
                x_val=out["validation"][0], y_val=out["validation"][1],
                x_test=out["test"][0], y_test=out["test"][1],
                num_classes=num_classes, natural_images=channels == 3)


def resize_images(images, size):
    """Resizes a uint8 NHWC batch to ``size`` x ``size`` (or ``size=(h, w)``)
    exactly as ``load_dataset(image_size=size)`` does; returns uint8.

    Bilinear, antialiased ``tf.image.resize`` in float32, rounded half to even
    and clipped to [0, 255]; images already of that size are returned
    unchanged (the loader does not resize them either).  Works eagerly and
    inside ``tf.function`` on images of any (even unknown) height and width,
    which is how the exported SavedModel resizes the images it serves.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8 or images.shape.rank != 4:
        raise DataError(f"resize_images needs uint8 NHWC images, got {images.dtype.name} "
                        f"of shape {images.shape}")
    h, w = (size, size) if isinstance(size, numbers.Integral) else size
    h, w = int(h), int(w)

    def resize():
        r = tf.image.resize(tf.cast(images, tf.float32), [h, w], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(r), 0.0, 255.0), tf.uint8)

    if images.shape[1:3].is_fully_defined():
        out = images if tuple(images.shape[1:3]) == (h, w) else resize()
    else:
        hw = tf.shape(images)[1:3]
        out = tf.cond(tf.reduce_all(tf.equal(hw, [h, w])), lambda: images, resize)
    return tf.ensure_shape(out, [None, h, w, images.shape[-1]])


def _resize_uint8(x: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(x), size, size, x.shape[-1]), np.uint8)
    for i in range(0, len(x), _RESIZE_CHUNK):
        out[i:i + _RESIZE_CHUNK] = resize_images(x[i:i + _RESIZE_CHUNK], size).numpy()
    return out


def load_dataset(name: str, *, data_dir: Optional[str] = None, image_size: Optional[int] = None,
                 validation_size: SizeSpec = None, test_size: SizeSpec = None, seed: int = 0,
                 max_train_examples: Optional[int] = None) -> ImageDataset:
    """Loads and validates an image classification dataset.

    Args:
      name: ``"digits"``, ``"npz:PATH"`` or a (locally prepared) tfds name.
      data_dir: tfds data directory (tfds names only).
      image_size: if given, resize every split to ``image_size x image_size``.
      validation_size / test_size: int count or float fraction in (0, 1).
      seed: seed of the split permutation (digits, npz).
      max_train_examples: keep only the first N training examples.

    Raises:
      DataError: on unavailable or invalid data.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    name = name.strip()
    if image_size is not None:
        if isinstance(image_size, (bool, np.bool_)) or not isinstance(image_size, numbers.Integral) or image_size < 1:
            raise _err(name, None, f"image_size must be a positive int, got {image_size!r}")
        image_size = int(image_size)
    if max_train_examples is not None:
        if (isinstance(max_train_examples, (bool, np.bool_)) or not isinstance(max_train_examples, numbers.Integral)
                or max_train_examples < 1):
            raise _err(name, "train", f"max_train_examples must be a positive int, got {max_train_examples!r}")
    seed = int(seed)

    if name.lower() == "digits":
        name = "digits"
        parts = _load_digits(name, validation_size, test_size, seed)
    elif name.startswith("npz:"):
        parts = _load_npz(name, name[len("npz:"):], validation_size, test_size, seed)
    else:
        parts = _load_tfds(name, data_dir, validation_size, test_size)

    for split, xk, yk in (("train", "x_train", "y_train"), ("validation", "x_val", "y_val"),
                          ("test", "x_test", "y_test")):
        if len(parts[xk]) == 0:
            raise _err(name, split, "empty split (0 examples)")
        _check_label_range(name, split, parts[yk], parts["num_classes"])

    if max_train_examples is not None:
        parts["x_train"] = parts["x_train"][:max_train_examples]
        parts["y_train"] = parts["y_train"][:max_train_examples]

    source_image_shape = tuple(int(d) for d in parts["x_train"].shape[1:])
    if image_size is not None and parts["x_train"].shape[1:3] != (image_size, image_size):
        for key in ("x_train", "x_val", "x_test"):
            parts[key] = _resize_uint8(parts[key], image_size)

    for key in ("x_train", "x_val", "x_test"):
        parts[key] = np.ascontiguousarray(parts[key], dtype=np.uint8)
    for key in ("y_train", "y_val", "y_test"):
        parts[key] = np.ascontiguousarray(parts[key], dtype=np.int64)
    return ImageDataset(name=name, num_classes=int(parts.pop("num_classes")),
                        natural_images=bool(parts.pop("natural_images")),
                        source_image_shape=source_image_shape, **parts)


# ---------------------------------------------------------------------------
# tf.data pipeline
# ---------------------------------------------------------------------------


def augment_batch(images, seed, *, pad: int = 4, flip: bool = False):
    """Standard CIFAR augmentation of a uint8 NHWC batch, deterministic in ``seed``.

    Each image is zero-padded by ``pad`` pixels on every side and randomly
    cropped back to HxW (offsets uniform in ``[0, 2*pad]`` per axis, i.e. the
    content shifts by at most ``pad`` pixels); with ``flip`` it is also
    mirrored horizontally with probability 1/2.  ``seed`` is a shape-[2]
    integer tensor for the stateless random ops.  Returns uint8 of the same shape.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    pad = int(pad)
    if pad < 0:
        raise DataError(f"augmentation pad must be >= 0, got {pad}")
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    if pad > 0:
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        oy = tf.random.stateless_uniform([b], seeds[0], minval=0, maxval=2 * pad + 1, dtype=tf.int32)
        ox = tf.random.stateless_uniform([b], seeds[1], minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    else:
        padded = images
        oy = tf.zeros([b], tf.int32)
        ox = tf.zeros([b], tf.int32)
    rows = oy[:, None] + tf.range(h)[None, :]                      # (B, H)
    cols = tf.range(w)[None, :]                                     # (1, W)
    if flip:
        do_flip = tf.random.stateless_uniform([b], seeds[2], minval=0, maxval=2, dtype=tf.int32) > 0
        cols = tf.where(do_flip[:, None], (w - 1) - cols, cols)
    cols = ox[:, None] + cols                                       # (B, W)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)             # (B, H, W+2p, C)
    out = tf.gather(out, cols, axis=2, batch_dims=1)                # (B, H, W, C)
    return tf.ensure_shape(out, images.shape)


def make_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool, augment: bool = False,
                    flip: bool = False, pad: int = 4, seed: int = 0, drop_remainder: bool = True,
                    repeat: bool = False, skip_batches: int = 0, name: Optional[str] = None):
    """Batched ``tf.data.Dataset`` of (uint8 NHWC images, int32 labels).

    * ``training``: epoch ``e`` visits the examples in the order
      ``stateless_shuffle(range(n), seed=(seed, e))``.
    * ``augment``: :func:`augment_batch` (pad + random crop, + flip if ``flip``)
      per batch ``b`` with the stateless seed ``(seed, b)``.
    Both depend on ``seed`` only (not on TensorFlow's global seed).
    * ``repeat``: repeat indefinitely (batches then span epoch boundaries).
    * ``skip_batches``: start at batch ``skip_batches`` of that stream (a
      resumed run), skipping index batches before any image is gathered or
      augmented; the same batches as ``.skip(skip_batches)``, cheaply.
    * ``name`` only labels error messages (default "train"/"evaluation").

    Raises DataError for bad inputs, e.g. a batch size larger than the split
    when ``drop_remainder`` is set.
    """
    import tensorflow as tf

    split = name or ("train" if training else "evaluation")
    ds_name = "make_tf_dataset"
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise _err(ds_name, split, f"batch_size must be a positive int, got {batch_size!r}")
    batch_size = int(batch_size)
    if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, numbers.Integral) or pad < 0:
        raise _err(ds_name, split, f"pad must be a non-negative int, got {pad!r}")
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise _err(ds_name, split, f"images must be uint8, got dtype {x.dtype}")
    if x.ndim != 4:
        raise _err(ds_name, split, f"images must have rank 4 (N, H, W, C), got shape {x.shape}")
    y = _check_labels(ds_name, split, y, len(x))
    if y.max() > np.iinfo(np.int32).max:
        raise _err(ds_name, split, f"labels out of range: {y.max()} does not fit int32")
    n = len(x)
    if drop_remainder and batch_size > n:
        raise _err(ds_name, split,
                   f"batch size {batch_size} is larger than the {n} examples of split {split!r} "
                   f"(with drop_remainder=True no batch would be produced)")

    x_t = tf.constant(x)
    y_t = tf.constant(y.astype(np.int32))
    seed = int(seed)

    # Epoch e visits the examples in the order stateless_shuffle(seed, e), and
    # batch b is augmented with the stateless seed (seed, b): the stream depends
    # on ``seed`` alone (not on TensorFlow's global seed), so a resumed run that
    # skips the batches it already trained on sees exactly the same data.
    base = tf.constant(seed, tf.int64)
    if training:
        epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
        ds = epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([base, e]))))
    else:
        ds = tf.data.Dataset.range(n)
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    image_shape = tuple(x.shape[1:])

    if augment:
        ds = ds.enumerate()  # batch b keeps its augmentation seed when skipped to

        def _fn(b, idx):
            imgs = tf.gather(x_t, idx)
            imgs = augment_batch(imgs, tf.stack([base, b]), pad=pad, flip=flip)
            return imgs, tf.gather(y_t, idx)
    else:
        def _fn(idx):
            return tf.gather(x_t, idx), tf.gather(y_t, idx)

    if skip_batches:
        ds = ds.skip(int(skip_batches))
    ds = ds.map(_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    bdim = batch_size if drop_remainder else None
    ds = ds.map(lambda a, b: (tf.ensure_shape(a, (bdim,) + image_shape), tf.ensure_shape(b, (bdim,))))
    return ds.prefetch(tf.data.AUTOTUNE)
