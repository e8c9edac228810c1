"""Checks what README command 1 (``experiments.run --preset=quick``) left in
its model directory: every candidate scored once with finite scores, and each
winner retrained, evaluated and exported as a SavedModel that serves raw test
images with the test accuracy recorded in its metrics.

    python .ci/check_run.py runs/quick
"""

import json
import math
import os
import sys


def fail(msg):
    print(f"check_run: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main(model_dir):
    import numpy as np
    import tensorflow as tf

    from oneshot_tf import config as config_lib
    from oneshot_tf import pipeline

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = config_lib.RunConfig.from_dict(json.load(f)["flags"])
    with open(os.path.join(model_dir, "candidates.jsonl")) as f:
        records = [json.loads(line) for line in f]
    ids = [r["id"] for r in records]
    if len(records) != cfg.num_candidates or len(set(ids)) != len(ids):
        fail(f"candidates.jsonl has {len(records)} records ({len(set(ids))} distinct), "
             f"expected {cfg.num_candidates} distinct")
    for r in records:
        if not (math.isfinite(r["score"]) and 0.0 <= r["score"] <= 1.0 and math.isfinite(r.get("kl", 0.0))):
            fail(f"candidate {r['id']} has score {r['score']} and kl {r.get('kl')}")
    with open(os.path.join(model_dir, "results.json")) as f:
        winners = json.load(f)["winners"]
    if len(winners) != cfg.num_winners:
        fail(f"results.json lists {len(winners)} winners, expected {cfg.num_winners}")
    import dataclasses
    # the dataset's own images, not resized: the serving signature resizes them
    data = pipeline.load_data(dataclasses.replace(cfg, image_size=0))
    for w in winners:
        out = os.path.join(model_dir, "winners", str(w["rank"]))
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        acc = metrics["test_accuracy"]
        if not 0.5 <= acc <= 1.0:
            fail(f"winner {w['rank']}: test accuracy {acc} (chance is {1 / data.num_classes:.2f})")
        serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
        images = data.x_test
        probs = np.concatenate([serve(images=tf.constant(images[i:i + 256]))["output_0"].numpy()
                                for i in range(0, len(images), 256)])
        if not np.allclose(probs.sum(-1), 1.0, atol=1e-4):
            fail(f"winner {w['rank']}: the SavedModel's probabilities do not sum to 1")
        served = float(np.mean(probs.argmax(-1) == data.y_test))
        if abs(served - acc) > 1.0 / len(images) + 1e-9:
            fail(f"winner {w['rank']}: the SavedModel serves test accuracy {served}, metrics.json says {acc}")
        print(f"check_run: winner {w['rank']} ({w['id']}): test accuracy {acc:.4f}, "
              f"SavedModel serves {served:.4f} on {len(images)} raw {images.shape[1]}x{images.shape[2]} test images")
    print(f"check_run: OK: {len(records)} candidates scored once, {len(winners)} winners exported")


if __name__ == "__main__":
    main(sys.argv[1])
