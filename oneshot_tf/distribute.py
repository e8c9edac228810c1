"""Model Garden-style strategy selection, and the little a training loop
needs to know about the cluster (who writes, where, and a barrier)."""

from __future__ import annotations

import os

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def configure_runtime(intra_op_threads: int = 0, deterministic: bool = False) -> bool:
    """Configure TensorFlow's runtime for a run: its intra-op thread pool
    (``--intra_op_threads``) and bitwise repeatability (``--deterministic``).
    Thread pools can only be sized before TensorFlow's runtime starts: the
    binaries call this first thing.

    ``intra_op_threads`` (0: TensorFlow's default, one thread per core).
    Later (a Python session that already ran TensorFlow ops) a different
    value is not applied, a warning says so, and ``False`` is returned.  On
    this project's 2-core CPU machine one thread made the quick preset's
    training step and the scorer faster (benchmarks/benchmark.py measures
    both settings): with two threads on two cores, a ghost batch norm over
    32 examples costs 190-300 us per call against 32 us with one.

    ``deterministic``: TensorFlow's op determinism
    (``tf.config.experimental.enable_op_determinism``: deterministic GPU
    kernels and ``tf.data``) and one inter-op thread, so that the same run
    on the same machine gives the same weights bit for bit.  Op determinism
    alone does not give that on CPU: TensorFlow's ``AddN`` (which sums a
    tensor's gradients from its several consumers, and the sums Grappler
    makes of chains of adds) reuses the buffer of whichever input no other
    op still holds and adds the inputs in an order that starts with it;
    with ops running concurrently on two or more inter-op threads that
    input varies from run to run, and so does the rounding of a sum of
    three or more tensors (measured on the one-shot model with two ghost
    batches: gradients differing by up to 5e-6 relative from one call to
    the next).  It costs the concurrency of independent ops (the quick
    preset's training step ran 1.7 to 1.8x slower on a 2-core CPU, README).
    Requested after TensorFlow's runtime started with more than one
    inter-op thread, it raises ``RuntimeError``: the guarantee could not
    be kept."""
    threads = int(intra_op_threads)
    if threads < 0:
        raise ValueError(f"--intra_op_threads={threads} must be >= 0 (0: TensorFlow's default)")
    if deterministic:
        if tf.config.threading.get_inter_op_parallelism_threads() != 1:
            try:
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                raise RuntimeError(
                    "--deterministic needs one inter-op thread, which can only be set before TensorFlow's "
                    "runtime starts: call oneshot_tf.distribute.configure_runtime(deterministic=True) before "
                    "running any TensorFlow op (the binaries do)") from None
        tf.config.experimental.enable_op_determinism()
    if not threads or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        from absl import logging
        logging.warning("--intra_op_threads=%d not applied: TensorFlow's runtime started before it was set "
                        "(set it before running any TensorFlow op, as the binaries do)", threads)
        return False
    return True


def get_distribution_strategy(name: str = "default", *, tpu_address: str = "") -> tf.distribute.Strategy:
    """A ``tf.distribute.Strategy`` by name (see ``STRATEGIES``).

    ``multi_worker_mirrored`` reads the cluster from ``TF_CONFIG``; ``tpu``
    resolves ``tpu_address`` (empty or ``local`` on a TPU VM)."""
    name = (name or "default").lower()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        # "local" is the TPU attached to this VM (an empty name would be looked
        # up through the Cloud TPU API and fail without TPU_NAME).
        address = "local" if tpu_address in ("", "local") else tpu_address
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
            if address != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            first = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][:200]
            raise ValueError(f"--strategy=tpu: no TPU could be initialized at --tpu={address!r} ({type(e).__name__}: "
                             f"{first}); on a TPU VM leave --tpu empty, elsewhere name the TPU") from e
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def cluster_resolver(strategy: tf.distribute.Strategy):
    """The strategy's cluster resolver, or None for single-process strategies."""
    return getattr(strategy, "cluster_resolver", None)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the artifacts: always, except for the
    non-chief workers of a multi-worker cluster (the chief is task ``chief``,
    or ``worker`` 0 when the cluster has no ``chief`` job)."""
    resolver = cluster_resolver(strategy)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    spec = resolver.cluster_spec().as_dict()
    if not spec:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in spec


def single_client(strategy: tf.distribute.Strategy) -> bool:
    """Whether one process drives every replica (all but multi-worker clusters)."""
    resolver = cluster_resolver(strategy)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return not resolver.cluster_spec().as_dict()


def write_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes what belongs in ``path``: ``path`` itself on
    the chief; a per-worker temporary sibling elsewhere (tf.distribute's
    convention: every worker must save, only the chief's copy is kept)."""
    if is_chief(strategy):
        return path
    resolver = cluster_resolver(strategy)
    parent, name = os.path.split(path.rstrip("/"))
    return os.path.join(parent, f".workertemp_{resolver.task_type}_{resolver.task_id}", name)


def remove_write_dir(path: str, strategy: tf.distribute.Strategy) -> None:
    """Delete a non-chief worker's temporary copy of ``path`` (no-op on the chief)."""
    if not is_chief(strategy):
        tmp = os.path.dirname(write_dir(path, strategy))
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Block until every replica of every worker gets here (an all-reduce):
    e.g. after the chief writes a checkpoint the others will read."""
    if strategy.num_replicas_in_sync == 1 and cluster_resolver(strategy) is None:
        return

    @tf.function
    def _sync():
        per_replica = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    _sync()


def default_jit_compile(strategy: tf.distribute.Strategy) -> bool:
    """XLA by default where it pays: on TPUs (which require it).  On CPU it
    is ~25x slower for the one-shot steps (benchmarks/benchmark.py, (d)); on GPU it is not
    measured yet, so it stays off (``--jit_compile`` turns it on)."""
    return isinstance(strategy, tf.distribute.TPUStrategy)
