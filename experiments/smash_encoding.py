"""SMASH's corrupted-encoding test (section 4.2): does the trained HyperNet read c?

    python -m experiments.smash_encoding --model_dir=DIR [--num_architectures=50] [--seed=0] [--output_dir=OUT]

DIR is a SMASH run whose proxy is trained (experiments.train or
experiments.run with --method=smash).  Scores --num_architectures sampled
architectures with their true encoding c and with c corrupted (dilations
shuffled among the convolutions; read/write bank patterns shuffled among a
block's ops), each on its own network structure, and writes
OUT/encoding_analysis.json (settings, per-architecture records, summary) and
OUT/encoding_analysis.png (true vs corrupted score; OUT defaults to
DIR/encoding_analysis).  Prints a verdict per corruption
(hypernets/smash/analysis.py).
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "A trained SMASH run directory (local or gs://).")
flags.mark_flag_as_required("model_dir")
flags.DEFINE_integer("num_architectures", 50, "Architectures sampled and scored with true and corrupted c.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the architectures' draw, the corruptions and the bootstrap.",
                     lower_bound=0)
flags.DEFINE_string("output_dir", "", "Where the JSON and PNG go (empty: MODEL_DIR/encoding_analysis).")
flags.DEFINE_bool("quiet", False, "No progress lines (the summary is still printed).")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hypernets.smash import analysis
    try:
        analysis.read_smash_config(FLAGS.model_dir)     # a wrong directory is refused before TensorFlow loads
    except analysis.AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    from experiments import common
    from oneshot_tf.data import DataError
    from oneshot_tf.pipeline import ProxyNotTrainedError
    from oneshot_tf.search_space import ArchitectureError
    common.setup_logging()

    def log(line):
        if not FLAGS.quiet:
            print(line, flush=True)

    try:
        result = analysis.analyze_model_dir(FLAGS.model_dir, num_architectures=FLAGS.num_architectures,
                                            seed=FLAGS.seed, output_dir=FLAGS.output_dir or None, log=log)
    except (analysis.AnalysisError, ProxyNotTrainedError, DataError, ArchitectureError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    summary = result["summary"]
    for name in result["settings"]["corruptions"]:
        print(summary[name]["verdict"])
        s = summary[name]
        if s["architectures"]:
            print(f"  true c higher in {s['frac_true_highest']:.0%}, tied in {s['frac_tied']:.0%}, lower in "
                  f"{s['frac_true_lower']:.0%} of {s['architectures']}; mean score {s['mean_true_score']:.4f} "
                  f"true, {s['mean_corrupted_score']:.4f} corrupted; mean |drop| {s['mean_abs_drop']:.4f}"
                  + (f"; {s['skipped']} no-op (skipped)" if s["skipped"] else ""))
        elif s["skipped"]:
            print(f"  a no-op on all {s['skipped']} architectures (skipped)")
    if summary["all"]["architectures"]:
        print(f"true c strictly highest among all its corruptions in {summary['all']['frac_true_highest']:.0%} "
              f"of {summary['all']['architectures']} architectures")
    print(f"wrote {result['paths']['json']} and {result['paths']['png']}")


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
