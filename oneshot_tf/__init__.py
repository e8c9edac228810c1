"""oneshot_tf: one-shot neural architecture search for Keras 3 / TensorFlow.

Main entry points: ``registry`` (the search methods, each a plug-in: one-shot
in ``methods.oneshot``), ``config.resolve`` (a method's preset plus flags),
``pipeline.SearchRun`` (train the proxy, score candidates, retrain and export
the winners), ``search_space.SearchSpace`` and ``proxy.Proxy`` (the two
interfaces a method implements), ``tuner`` (keras-tuner integration).

Importing the package before TensorFlow turns on TensorFlow's oneDNN CPU
kernels on x86-64 (``TF_ENABLE_ONEDNN_OPTS=1``) unless the environment sets
that variable: see ``enable_onednn``.
"""

import os as _os
import platform as _platform
import sys as _sys

__version__ = "0.1.0"

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def enable_onednn() -> bool:
    """Default ``TF_ENABLE_ONEDNN_OPTS`` to 1 on x86-64; True if it set it.

    TensorFlow turns its oneDNN kernels on by itself only on CPUs with
    AVX-512 VNNI/BF16 or AMX; elsewhere on x86-64 (AVX2 machines: AMD EPYC
    before Zen 4, older Xeons) it runs its own Eigen kernels, which were 2x
    slower for this package's training step and 3x for its scorer on a
    2-core AMD EPYC (README, Benchmarks).  The variable is read once, when
    TensorFlow loads: this does nothing if TensorFlow is already imported,
    if the variable is set (``TF_ENABLE_ONEDNN_OPTS=0`` keeps Eigen), or on
    other architectures.  Runs when the package is imported.
    """
    if "tensorflow" in _sys.modules or ONEDNN_VARIABLE in _os.environ:
        return False
    if _platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    _os.environ[ONEDNN_VARIABLE] = "1"
    return True


enable_onednn()
