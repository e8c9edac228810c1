"""SavedModel export of stand-alone models: raw images in, probabilities out."""

from __future__ import annotations

import uuid

import keras
import tensorflow as tf

from oneshot_tf import io_utils


def export_saved_model(model: keras.Model, path: str) -> str:
    """Export ``model`` (uint8 NHWC images -> logits) as a SavedModel at ``path``.

    The ``serve`` endpoint takes a batch of raw images exactly as the dataset
    delivers them (uint8, NHWC) and returns class probabilities.  The export
    is written to a temporary directory and renamed, so a half-written
    SavedModel never sits at ``path``.
    """
    spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.uint8, name="images")

    def serve(images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    archive.write_out(tmp, verbose=False)
    io_utils.replace_dir(tmp, path)
    return path


def load_serving(path: str):
    """The exported ``serve`` function of a SavedModel (the loaded object is
    kept alive with it: its variables would be freed otherwise)."""
    loaded = tf.saved_model.load(path)

    def serve(images):
        return loaded.serve(images)

    serve.loaded = loaded
    return serve
