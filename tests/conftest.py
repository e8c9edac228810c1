"""Two logical CPU devices for the whole test session, so MirroredStrategy
can run two replicas on this CPU-only machine (this must happen before
TensorFlow initializes its devices; the default strategy keeps using CPU:0)."""

import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
if _cpus and not tf.config.get_logical_device_configuration(_cpus[0]):
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
