"""Ranking fidelity: how well each method's score predicts stand-alone accuracy.

    python -m experiments.correlate --model_dir=DIR [--preset=quick] [--methods=oneshot] [--helpfull]

Trains (or, with --reuse, reuses) each method's proxy, scores --num_candidates
sampled candidates with each, trains a stratified sample of --num_truth of
them stand-alone (--truth_epochs, --truth_seeds) and writes DIR/fidelity.csv,
DIR/fidelity.md (printed), DIR/fidelity.png and TensorBoard events in DIR/tb,
beside the baselines (parameters, FLOPs, synflow, NASWOT, SGD for k steps)
and the ground truth's own seed-to-seed ceiling.  Everything is cached in
DIR: a rerun, a grown study or an added method trains nothing twice.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments import common
from oneshot_tf import config as config_lib
from oneshot_tf import registry
from oneshot_tf.fidelity import study as study_lib

FLAGS = flags.FLAGS


def define_flags(argv=None):
    """Study flags, generic flags and the flags of every method in
    ``--methods`` (read from ``argv`` first; a setting two methods share is
    one flag that sets both).  Defaults are the quick preset's.  Returns the
    names of the flags that are settings."""
    argv = sys.argv if argv is None else argv
    try:
        methods = study_lib.method_names(common.flag_from_argv(argv, "methods"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    study, cfgs = study_lib.resolve("quick", {"methods": ",".join(methods)})
    flags.DEFINE_string("model_dir", None, "Directory of the study (local or gs://); it resumes there.")
    flags.mark_flag_as_required("model_dir")
    flags.DEFINE_enum("preset", "quick", sorted(study_lib.STUDY_PRESETS),
                      "Preset: each method's preset of this name, then the study's own values; explicit flags "
                      "override both. Flag defaults shown are the quick preset's.")
    flags.DEFINE_string("tpu", "", "TPU address for --strategy=tpu (proxy training and scoring).")
    flags.DEFINE_bool("quiet", False, "No progress bars.")
    for f in config_lib.fields(study_lib.StudySettings):
        common.define_field(f, getattr(study, f.name), f"[study] {f.metadata['help']}")
    for f in config_lib.fields(config_lib.RunConfig):
        if f.name not in ("method", "preset"):
            common.define_field(f, getattr(cfgs[0], f.name), f.metadata["help"])
    names = [f.name for f in config_lib.fields(study_lib.StudySettings)]
    names += [f.name for f in config_lib.fields(config_lib.RunConfig) if f.name not in ("method", "preset")]
    seen = {}
    for cfg in cfgs:
        for f in config_lib.fields(registry.get(cfg.method).settings):
            seen.setdefault(f.name, (f, getattr(cfg.settings, f.name), []))[2].append(cfg.method)
    for f, default, owners in seen.values():
        common.define_field(f, default, f"[{', '.join(owners)}] {f.metadata['help']}")
    return names + list(seen)


def resolve_from_flags(names):
    """The study and the methods' configs: the preset, then the flags given."""
    return study_lib.resolve(FLAGS.preset, {n: FLAGS[n].value for n in names if FLAGS[n].present})


def _main(argv, names):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf
    from oneshot_tf.data import DataError
    from oneshot_tf.distribute import configure_runtime, get_distribution_strategy
    from oneshot_tf.training import TrainingPreempted
    common.setup_logging()
    try:
        study, cfgs = resolve_from_flags(names)
        configure_runtime(cfgs[0].intra_op_threads, cfgs[0].deterministic)
        strategy = get_distribution_strategy(cfgs[0].strategy, tpu_address=FLAGS.tpu)
        study_lib.FidelityStudy(study, cfgs, FLAGS.model_dir, strategy=strategy, verbose=not FLAGS.quiet).run()
    except TrainingPreempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(TrainingPreempted.exit_code)
    except (DataError, ValueError, RuntimeError) + common.file_system_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(tf.io.gfile.GFile(f"{FLAGS.model_dir.rstrip('/')}/fidelity.md").read())


def main():
    names = define_flags()
    app.run(lambda argv: _main(argv, names))


if __name__ == "__main__":
    main()
