"""Two logical CPU devices for the whole test session, so MirroredStrategy
can run two replicas on this CPU-only machine (this must happen before
TensorFlow initializes its devices; the default strategy keeps using CPU:0).
One intra-op thread per test process: the suite runs a process per core.
The package is imported first, so TensorFlow loads with its CPU defaults
(oneDNN kernels on x86-64), as it does for users of the package."""

import functools

import oneshot_tf  # noqa: F401  (before TensorFlow: oneshot_tf.enable_onednn)
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
_cpus = tf.config.list_physical_devices("CPU")
if _cpus and not tf.config.get_logical_device_configuration(_cpus[0]):
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@functools.lru_cache(maxsize=None)
def two_cpus():
    """One MirroredStrategy over the two logical CPUs for the whole session
    (separate instances in one process would reuse collective instance keys,
    and their all-reduces would meet each other's)."""
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "tests/conftest.py configures two logical CPUs"
    return tf.distribute.MirroredStrategy([cpus[0].name, cpus[1].name])
