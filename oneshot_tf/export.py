"""SavedModel export of stand-alone models: raw images in, probabilities out.

Signatures of an export (all take a batch of uint8 NHWC images and return
float32 class probabilities under the output key ``output_0``):

* ``serve`` (also ``serving_default``): images of any height and width, shape
  ``(-1, -1, -1, C)`` -- e.g. the dataset's own 28x28 images for a model
  trained with ``--image_size=16``.  They are resized inside with
  :func:`oneshot_tf.data.resize_images`, the very function ``load_dataset``
  resized the training data with, so a raw image gives bit-identical model
  inputs to the training pipeline's; images already at the model's size pass
  through unchanged.
* ``serve_resized``: images already at the model's size, shape
  ``(-1, H, W, C)``; no resize.

The sizes are recorded in ``serving.json`` of the export
(``image_shape``: the model's input, ``source_image_shape``: the dataset's
images before resizing); see :func:`serving_info`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from oneshot_tf import data as data_lib
from oneshot_tf import io_utils

SERVING_INFO = "serving.json"  # (TensorFlow's ram:// lists an assets.extra/ beside assets/ as assets/.extra)


def _shape(what, shape) -> tuple:
    try:
        dims = tuple(shape)
        if len(dims) == 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            return dims
    except TypeError:
        pass
    raise ValueError(f"{what} must be (H, W, C) of positive ints, got {shape!r}")


def export_saved_model(model: keras.Model, path: str, *,
                       source_image_shape: Optional[Sequence[int]] = None) -> str:
    """Export ``model`` (uint8 NHWC images -> logits) as a SavedModel at ``path``.

    ``serve``/``serving_default`` takes uint8 images of any size and resizes
    them to the model's input size exactly as ``load_dataset(image_size=...)``
    does; ``serve_resized`` takes images already of that size (see the module
    docstring).  ``source_image_shape`` (default: the model's input shape) is
    the dataset's image shape before resizing, recorded in
    ``serving.json``.  The export is written to a temporary
    directory and renamed, so a half-written SavedModel never sits at ``path``.
    """
    image_shape = _shape("the model's input shape (without the batch axis)",
                         tuple(model.input_shape[1:]))
    h, w, c = image_shape
    source = image_shape if source_image_shape is None else _shape(
        "source_image_shape", tuple(int(d) if hasattr(d, "__index__") else d for d in source_image_shape))
    if source[-1] != c:
        raise ValueError(f"source_image_shape {source} has {source[-1]} channels, the model takes {c}")

    def probabilities(images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)

    def serve(images):
        return probabilities(data_lib.resize_images(images, (h, w)))

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also written as the "serving_default" signature.
    archive.add_endpoint(name="serve", fn=serve,
                         input_signature=[tf.TensorSpec((None, None, None, c), tf.uint8, name="images")])
    archive.add_endpoint(name="serve_resized", fn=probabilities,
                         input_signature=[tf.TensorSpec((None,) + image_shape, tf.uint8, name="images")])
    tmp = io_utils.temporary_sibling(path)
    archive.write_out(tmp, verbose=False)
    io_utils.write_json(io_utils.join(tmp, SERVING_INFO), {
        "image_shape": list(image_shape),
        "source_image_shape": list(source),
        "signatures": {
            "serving_default": "same as serve",
            "serve": f"uint8 (-1, -1, -1, {c}) images of any size, resized inside to {h}x{w} as the "
                     "training data was -> output_0: float32 class probabilities",
            "serve_resized": f"uint8 (-1, {h}, {w}, {c}) images already {h}x{w} -> output_0: "
                             "float32 class probabilities",
        },
        "resize": "oneshot_tf.data.resize_images: bilinear antialiased tf.image.resize in float32, rounded "
                  "half to even, clipped to [0, 255]; images already of the model's size are left unchanged",
    })
    io_utils.replace_dir(tmp, path)
    return path


def serving_info(path: str) -> dict:
    """The sizes and signatures recorded with an export (``serving.json``)."""
    return io_utils.read_json(io_utils.join(path, SERVING_INFO))


def load_serving(path: str):
    """The exported ``serve`` function of a SavedModel (uint8 images of any
    size -> probabilities; the loaded object is kept alive with it: its
    variables would be freed otherwise).  ``.info`` is :func:`serving_info`."""
    loaded = tf.saved_model.load(path)

    def serve(images):
        return loaded.serve(images)

    serve.loaded = loaded
    serve.info = serving_info(path)
    return serve
