"""One worker of a local two-process MultiWorkerMirroredStrategy cluster
(used by tests/test_multiworker.py; not a test itself).

    python tests/multiworker_run.py INDEX PORT0,PORT1 MODEL_DIR OUT.npz [step=run|train] [flag=value ...]

Runs the whole pipeline (train the proxy, score, retrain and export; or with
``step=train`` only the proxy training) with ``--strategy=multi_worker_mirrored``
semantics and writes this worker's final proxy weights and results to OUT.npz
(each worker its own file).  Preempted (SIGTERM), it exits with status 42."""

import json
import os
import sys

index, ports, model_dir, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
overrides = dict(arg.split("=", 1) for arg in sys.argv[5:])
step = overrides.pop("step", "run")
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
    "task": {"type": "worker", "index": index}})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from oneshot_tf import config as config_lib  # noqa: E402
from oneshot_tf.distribute import get_distribution_strategy  # noqa: E402
from oneshot_tf.pipeline import SearchRun  # noqa: E402
from oneshot_tf.training import TrainingPreempted  # noqa: E402

defaults = config_lib.resolve("tiny", {}).to_dict()  # the flags' types: those of their defaults
cfg = config_lib.resolve("tiny", {k: type(defaults[k])(v) for k, v in overrides.items()})
strategy = get_distribution_strategy("multi_worker_mirrored")
run = SearchRun(cfg, model_dir, strategy=strategy, verbose=False)
try:
    results = run.run() if step == "run" else run.train_proxy()
except TrainingPreempted as e:
    print(e, flush=True)
    sys.exit(TrainingPreempted.exit_code)
weights = {v.path: v.numpy() for v in run.proxy.model.weights}
np.savez(out, results=np.array(json.dumps(results)), num_replicas=strategy.num_replicas_in_sync,
         **{f"w/{k}": v for k, v in weights.items()})
