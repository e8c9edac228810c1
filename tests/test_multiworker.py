"""MultiWorkerMirroredStrategy with two local worker processes on 127.0.0.1:
the whole pipeline runs, both workers end with the same weights, only the
chief writes the artifacts, and every candidate is scored exactly once."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # two worker processes: CI's integration step

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(tmp_path, model_dir, flags):
    ports = ",".join(str(p) for p in _free_ports(2))
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return [subprocess.Popen([sys.executable, str(REPO / "tests" / "multiworker_run.py"), str(i), ports,
                              str(model_dir), str(tmp_path / f"worker{i}.npz"), *flags],
                             cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def _wait(procs, codes=(0, 0)):
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=500)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-worker run timed out")
    for i, (p, out, code) in enumerate(zip(procs, outputs, codes)):
        assert p.returncode == code, f"worker {i} exited {p.returncode}:\n{out[-4000:]}"
    return outputs


def test_two_workers_run_the_pipeline(tmp_path):
    model_dir = tmp_path / "run"
    flags = ["num_cells=1", "num_stages=1", "ghost_batch_size=8", "train_steps=4", "num_candidates=6",
             "candidates_per_pass=2", "num_winners=1",
             "retrain_steps=2"]
    _wait(_start(tmp_path, model_dir, flags))

    w0, w1 = (np.load(tmp_path / f"worker{i}.npz", allow_pickle=False) for i in range(2))
    assert int(w0["num_replicas"]) == 2
    keys = [k for k in w0.files if k.startswith("w/")]
    assert len(keys) > 50
    for k in keys:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
    assert json.loads(str(w0["results"])) == json.loads(str(w1["results"]))

    # Only the chief (worker 0) wrote artifacts; no worker temp dirs remain.
    names = sorted(p.name for p in model_dir.iterdir())
    assert ".workertemp_worker_1" not in names and not any(n.startswith(".workertemp") for n in names), names
    assert {"config.json", "candidates.jsonl", "proxy", "tuner", "winners", "results.json"} <= set(names)
    lines = [json.loads(l) for l in open(model_dir / "candidates.jsonl")]
    assert len(lines) == 6 == len({r["id"] for r in lines})
    assert sorted(r["index"] for r in lines) == list(range(6))
    winner = model_dir / "winners" / "1"
    assert (winner / "saved_model").is_dir() and (winner / "metrics.json").exists()
    assert json.loads(str(w0["results"]))[0]["id"] == json.load(open(winner / "metrics.json"))["id"]


def test_sigterm_on_one_worker_checkpoints_both_and_resumes(tmp_path):
    """Preemption of the non-chief worker: tf.distribute's preemption handling
    makes both workers save at the same step and exit with the restart code;
    the same command on both resumes from that checkpoint and finishes."""
    import signal
    import time

    from oneshot_tf.training import checkpoint_step

    model_dir = tmp_path / "run"
    flags = ["step=train", "num_cells=1", "num_stages=1", "ghost_batch_size=8", "train_steps=150",
             "checkpoint_every=100000", "log_every=1"]
    procs = _start(tmp_path, model_dir, flags)
    events = model_dir / "proxy" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        files = list(events.glob("events.*")) if events.exists() else []
        if files and files[0].stat().st_size > 3000:  # a few logged steps
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "training ended before SIGTERM"
    procs[1].send_signal(signal.SIGTERM)
    outputs = _wait(procs, codes=(42, 42))
    assert all("preempted (SIGTERM) at step" in out for out in outputs)
    step = checkpoint_step(str(model_dir / "proxy"))
    assert 0 < step < 150
    assert all(f"at step {step}" in out for out in outputs)  # both stopped at the same step

    _wait(_start(tmp_path, model_dir, flags))
    assert checkpoint_step(str(model_dir / "proxy")) == 150
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz", allow_pickle=False) for i in range(2))
    for k in (k for k in w0.files if k.startswith("w/")):
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
