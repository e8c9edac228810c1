"""Speed benchmarks (python -m benchmarks.NAME --help); ratios measured side by side in one process."""

import oneshot_tf  # noqa: F401  (before TensorFlow, as in the package's users: oneshot_tf.enable_onednn)
