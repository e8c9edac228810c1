"""Thin absl binaries over the oneshot_tf library (python -m experiments.run --helpfull)."""

import os

# Keep TensorFlow's C++ start-up chatter out of the binaries' output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
