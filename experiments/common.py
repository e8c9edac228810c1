"""Flags shared by every binary: each maps onto a ``RunConfig`` field."""

from __future__ import annotations

import dataclasses
import sys

from absl import flags, logging

from oneshot_tf import config as config_lib
from oneshot_tf.distribute import STRATEGIES, get_distribution_strategy

HELP = {
    "method": "Search method (proxy): oneshot.",
    "preset": f"Preset of defaults: {', '.join(config_lib.PRESETS)}; explicit flags override it.",
    "dataset": "digits (embedded, no network), a tfds name (cifar10, cifar100, ...), or npz:PATH "
               "(keys x_train, y_train, optional x_test, y_test).",
    "data_dir": "tfds data directory holding prepared datasets (tfds build NAME --data_dir=DIR).",
    "image_size": "Resize images to this square size (0: keep the dataset's size).",
    "validation_size": "Validation examples carved from the training set (count, or fraction < 1; 0: default).",
    "max_train_examples": "Use at most this many training examples (0: all).",
    "seed": "Seed of data splits, initialization, path dropout, augmentation and candidate sampling.",
    "num_cells": "Cells in the network.",
    "num_stages": "Stages; between stages a fixed reduction (BN-ReLU, 2x2 average pooling with stride 2, "
                  "1x1 convolution to twice the stage's filters) halves each of the two previous states.",
    "filters": "F: filters per choice block in the first stage (doubled every stage).",
    "num_blocks": "N_choice: choice blocks per cell.",
    "ghost_batch_size": "Examples per ghost batch (own BN statistics and own path-dropout decisions).",
    "drop_rate": "r: path-dropout coefficient; the final drop rate of a path is r**(1/k), k its fan-in.",
    "weight_decay": "L2 coefficient for the proxy (applied only to paths in use).",
    "train_steps": "Proxy training steps.",
    "batch_size": "Global batch size of proxy training.",
    "learning_rate": "Initial learning rate of proxy training (SGD with Nesterov momentum 0.9; schedule: "
                     "--lr_schedule).",
    "lr_schedule": "Learning-rate schedule of proxy training: cosine (decay to 0), constant, or cosine_floor "
                   "(cosine decay to --lr_floor x --learning_rate). Stand-alone retraining always uses cosine.",
    "lr_floor": "For --lr_schedule=cosine_floor: the final learning rate as a fraction of --learning_rate, in (0, 1).",
    "augment": "Random crop after 4-pixel padding (plus horizontal flips on natural images).",
    "search": "How candidates are chosen: random (the papers' method), refine (SMASH's perturbation chain) "
              "or evolution (regularized evolution); the last two are keras-tuner searches in DIR/tuner.",
    "num_candidates": "Candidates to score.",
    "candidates_per_pass": ("Candidates scored in one compiled pass (each on the same examples, in its own ghost "
                            "batches)."),
    "score_examples": "Validation examples used to score a candidate, the first ones (0: all; every one is "
                      "counted, the last group being filled up with other validation images).",
    "kl_examples": "Unlabeled training examples for the symmetrized-KL score, drawn at random (seeded) from "
                   "the training split (0: off).",
    "kl_reference": "What the KL score compares a candidate against: dropout (the paper's: a collection of nearly-"
                    "all-on architectures sampled with path dropout at r=1e-8, one per group of KL examples, "
                    "seeded) or all_on (the one-shot model with every path on).",
    "num_winners": "Best candidates to retrain stand-alone and export.",
    "ranking": "top: highest score; small: fewest parameters above the small_percentile score.",
    "small_percentile": "Score percentile a candidate must reach for --ranking=small.",
    "retrain_filters": "F of the retrained stand-alone models (0: the search's F).",
    "retrain_steps": "Training steps per stand-alone model.",
    "retrain_batch_size": "Batch size of stand-alone training.",
    "retrain_learning_rate": "Initial learning rate of stand-alone training.",
    "retrain_weight_decay": "L2 coefficient of stand-alone training.",
    "bn_momentum": "BN moving-average momentum of stand-alone models (suit it to retrain_steps).",
    "strategy": f"tf.distribute strategy: {', '.join(STRATEGIES)}.",
    "jit_compile": "Compile the training and scoring steps with XLA. Unset: on for TPU, off otherwise "
                   "(on CPU measured ~25x slower, benchmark (d); GPU not measured yet).",
    "precision": "float32, mixed_bfloat16 (TPU) or mixed_float16 (GPU, with dynamic loss scaling); "
                 "BN statistics, normalizations, softmax and losses stay float32.",
    "checkpoint_every": "Steps between checkpoints.",
    "log_every": "Steps between TensorBoard/progress updates (and host reads of the step results).",
}

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "Directory of the run (local or gs://); steps resume in it.")
    flags.mark_flag_as_required("model_dir")
    flags.DEFINE_string("tpu", "", "TPU address for --strategy=tpu (empty or 'local' on a TPU VM).")
    flags.DEFINE_bool("quiet", False, "No progress bars.")
    defaults = config_lib.RunConfig()
    for f in dataclasses.fields(config_lib.RunConfig):
        default = getattr(defaults, f.name)
        if f.name == "preset":
            flags.DEFINE_enum("preset", "quick", list(config_lib.PRESETS), HELP["preset"])
        elif f.name == "jit_compile":
            flags.DEFINE_bool(f.name, None, HELP[f.name])
        elif isinstance(default, bool):
            flags.DEFINE_bool(f.name, default, HELP[f.name])
        elif isinstance(default, int):
            flags.DEFINE_integer(f.name, default, HELP[f.name])
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, default, HELP[f.name])
        else:
            flags.DEFINE_string(f.name, default, HELP[f.name])


def config_from_flags() -> config_lib.RunConfig:
    overrides = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.RunConfig)
                 if f.name != "preset" and FLAGS[f.name].present}
    return config_lib.resolve(FLAGS.preset, overrides)


def make_run():
    from oneshot_tf import pipeline
    cfg = config_from_flags()
    strategy = get_distribution_strategy(cfg.strategy, tpu_address=FLAGS.tpu)
    return pipeline.SearchRun(cfg, FLAGS.model_dir, strategy=strategy, verbose=not FLAGS.quiet)


def run_step(step):
    """Run ``step(search_run)``; known errors end the program with a message, not a traceback."""
    from oneshot_tf.data import DataError
    from oneshot_tf.pipeline import ProxyNotTrainedError
    from oneshot_tf.search_space import ArchitectureError
    from oneshot_tf.training import TrainingDivergedError, TrainingPreempted
    import tensorflow as tf
    logging.set_verbosity(logging.INFO)
    tf.get_logger().setLevel("ERROR")
    # INFO lines from this package only; TensorFlow's own INFO chatter is dropped.
    logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= logging.converter.STANDARD_WARNING
        or "oneshot_tf" in r.pathname or "experiments" in r.pathname)
    try:
        step(make_run())
    except TrainingPreempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(TrainingPreempted.exit_code)
    except (DataError, ArchitectureError, ProxyNotTrainedError, TrainingDivergedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def make_main(step):
    """The ``main`` of a binary that runs ``step(search_run)``."""
    from absl import app

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        run_step(step)

    def main():
        define_flags()
        app.run(_main)

    return main
