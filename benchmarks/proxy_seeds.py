"""Proxy training of a preset over several seeds, on one device and on two
mirrored replicas: does every run finish its steps with a finite loss?

    python -m benchmarks.proxy_seeds [--preset=quick --seeds=0,1,2,3,4 --replicas=1,2]

Each run is the pipeline's own proxy training (``SearchRun.train_proxy``) in a
fresh directory under ``--root`` (a temporary directory by default).  Two
replicas run on two logical CPU devices (``MirroredStrategy``), so with the
quick preset each replica holds one ghost batch: the case where a path
dropped by a replica's only ghost batch used to run on an empty batch.
Prints one line per run and a summary; ``--json`` also writes the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--replicas", default="1,2", help="comma-separated replica counts (logical CPU devices)")
    p.add_argument("--train_steps", type=int, default=0, help="0: the preset's")
    p.add_argument("--root", default="", help="directory for the runs (default: a temporary one)")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    replica_counts = [int(r) for r in args.replicas.split(",") if r]

    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(max(replica_counts))])
    tf.get_logger().setLevel("ERROR")

    from oneshot_tf import config as config_lib
    from oneshot_tf import pipeline
    from oneshot_tf.training import TrainingDivergedError

    overrides = {"train_steps": args.train_steps} if args.train_steps else {}
    root = args.root or tempfile.mkdtemp(prefix="proxy_seeds_")
    print(f"proxy training, preset {args.preset}, seeds {seeds}, replicas {replica_counts}; "
          f"{platform.processor() or platform.machine()}, TensorFlow {tf.__version__}; runs in {root}")
    results = []
    for replicas in replica_counts:
        devices = [f"/cpu:{i}" for i in range(replicas)]
        for seed in seeds:
            cfg = config_lib.resolve(args.preset, {**overrides, "seed": seed})
            strategy = (tf.distribute.MirroredStrategy(devices) if replicas > 1
                        else tf.distribute.OneDeviceStrategy(devices[0]))
            run = pipeline.SearchRun(cfg, f"{root}/r{replicas}_s{seed}", strategy=strategy, verbose=False)
            t0 = time.time()
            try:
                last = run.train_proxy()
                rec = {"status": "finished", "loss": last.get("loss"), "accuracy": last.get("accuracy")}
            except TrainingDivergedError as e:
                rec = {"status": "diverged", "error": str(e)}
            rec.update(replicas=replicas, seed=seed, steps=cfg.train_steps, seconds=round(time.time() - t0, 1))
            results.append(rec)
            if rec["status"] == "finished":
                print(f"replicas {replicas} seed {seed}: finished {cfg.train_steps} steps in {rec['seconds']:.0f} s, "
                      f"last loss {rec['loss']:.3f}, last batch accuracy {rec['accuracy']:.3f}", flush=True)
            else:
                print(f"replicas {replicas} seed {seed}: {rec['error']}", flush=True)
    done = sum(r["status"] == "finished" for r in results)
    print(f"{done} of {len(results)} runs finished every step with finite losses and weights")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if done == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
