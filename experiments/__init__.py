"""Thin absl binaries over the oneshot_tf library (python -m experiments.run --helpfull)."""

import os

# Keep TensorFlow's C++ start-up chatter out of the binaries' output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import oneshot_tf  # noqa: E402,F401  (before TensorFlow: oneshot_tf.enable_onednn)
