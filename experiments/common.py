"""Flags shared by every binary: each maps onto a ``RunConfig`` field, or
onto a field of the chosen method's own settings.

The method's flags depend on ``--method``, so it is read from the command
line before the flags are defined: ``--method=NAME --helpfull`` lists that
method's flags (and ``--helpfull`` alone the default method's).
"""

from __future__ import annotations

import sys
from typing import List, Optional

from absl import flags, logging

from oneshot_tf import config as config_lib
from oneshot_tf import registry
from oneshot_tf.distribute import configure_runtime, get_distribution_strategy

FLAGS = flags.FLAGS


def flag_from_argv(argv: List[str], name: str) -> str:
    """The value of ``--NAME`` on a command line ('' if absent)."""
    value = ""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def method_from_argv(argv: List[str]) -> str:
    """The value of ``--method`` on a command line ('' if absent)."""
    return flag_from_argv(argv, "method")


def define_field(f, default, help_text: str):
    """The absl flag of a ``config.setting`` field."""
    meta = f.metadata
    if meta["tristate"]:
        flags.DEFINE_bool(f.name, None, help_text)
    elif meta["choices"] is not None:
        flags.DEFINE_enum(f.name, default, list(meta["choices"]), help_text)
    elif isinstance(default, bool):
        flags.DEFINE_bool(f.name, default, help_text)
    elif isinstance(default, int):
        flags.DEFINE_integer(f.name, default, help_text)
    elif isinstance(default, float):
        flags.DEFINE_float(f.name, default, help_text)
    else:
        flags.DEFINE_string(f.name, default, help_text)


def define_flags(argv: Optional[List[str]] = None):
    """Generic flags, and the flags of the method named by ``--method`` in
    ``argv`` (default ``sys.argv``; an unknown method ends the program with
    the list of registered ones).  Flag defaults are the method's resolved
    ``quick`` preset's, as a run without flags gets them."""
    argv = sys.argv if argv is None else argv
    try:
        method = registry.get(method_from_argv(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    flags.DEFINE_string("model_dir", None, "Directory of the run (local or gs://); steps resume in it.")
    flags.mark_flag_as_required("model_dir")
    flags.DEFINE_string("tpu", "", "TPU address for --strategy=tpu (empty or 'local' on a TPU VM).")
    flags.DEFINE_bool("quiet", False, "No progress bars.")
    defaults = config_lib.resolve("quick", {}, method=method.name)
    for f in config_lib.fields(config_lib.RunConfig):
        if f.name == "method":
            flags.DEFINE_enum("method", method.name, registry.names(),
                              f"Search method: {'; '.join(f'{n}: {registry.get(n).description}' for n in registry.names())}. "
                              f"--method=NAME --helpfull lists a method's own flags.")
        elif f.name == "preset":
            flags.DEFINE_enum("preset", "quick", sorted(method.presets),
                              f"Preset of {method.name}'s defaults ({', '.join(sorted(method.presets))}); explicit "
                              f"flags override it. Flag defaults shown here are the quick preset's.")
        else:
            define_field(f, getattr(defaults, f.name), f.metadata["help"])
    for f in config_lib.fields(method.settings):
        define_field(f, getattr(defaults.settings, f.name), f"[{method.name}] {f.metadata['help']}")
    return method


def config_from_flags() -> config_lib.RunConfig:
    """The resolved config: the method's preset, then the flags given explicitly."""
    method = registry.get(FLAGS.method)
    names = [f.name for f in config_lib.fields(config_lib.RunConfig) if f.name not in ("preset", "method")]
    names += [f.name for f in config_lib.fields(method.settings)]
    overrides = {n: FLAGS[n].value for n in names if FLAGS[n].present}
    return config_lib.resolve(FLAGS.preset, overrides, method=method.name)


def make_run(existing: bool = False):
    from oneshot_tf import pipeline
    cfg = config_from_flags()
    configure_runtime(cfg.intra_op_threads, cfg.deterministic)  # before TensorFlow's runtime starts
    strategy = get_distribution_strategy(cfg.strategy, tpu_address=FLAGS.tpu)
    return pipeline.SearchRun(cfg, FLAGS.model_dir, strategy=strategy, verbose=not FLAGS.quiet, existing=existing)


def setup_logging():
    """INFO lines from this package only; TensorFlow's own INFO chatter is dropped."""
    import tensorflow as tf
    logging.set_verbosity(logging.INFO)
    tf.get_logger().setLevel("ERROR")
    logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= logging.converter.STANDARD_WARNING
        or "oneshot_tf" in r.pathname or "experiments" in r.pathname)


def run_step(step, existing=False):
    """Run ``step(search_run)``; known errors end the program with a message,
    not a traceback.  ``existing``: the step continues a run, so the model
    directory must hold one (``SearchRun(existing=True)``); a callable is
    asked once the flags are parsed."""
    from oneshot_tf.data import DataError
    from oneshot_tf.pipeline import NotScoredError, ProxyNotTrainedError
    from oneshot_tf.search_space import ArchitectureError
    from oneshot_tf.training import TrainingDivergedError, TrainingPreempted
    setup_logging()
    try:
        step(make_run(existing() if callable(existing) else existing))
    except TrainingPreempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(TrainingPreempted.exit_code)
    except (DataError, ArchitectureError, ProxyNotTrainedError, NotScoredError, TrainingDivergedError,
            ValueError) + file_system_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def file_system_errors() -> tuple:
    """TensorFlow's refusals of a path (a parent that is a file, no
    permission, an unreachable bucket): bad input, not a bug to trace."""
    import tensorflow as tf
    return (tf.errors.FailedPreconditionError, tf.errors.PermissionDeniedError, tf.errors.NotFoundError,
            tf.errors.UnavailableError, tf.errors.AlreadyExistsError)


def report(search_run, results):
    """Print, on the chief, ``search_run.summary(results)`` (the winners'
    test accuracies and SavedModels, where the results are); returns
    ``results``."""
    if search_run.chief:
        print(search_run.summary(results), flush=True)
    return results


#: What ``--architecture`` takes (``SearchRun.resolve_architecture``).
ARCHITECTURE_FORMS = ("its JSON text (or a candidates.jsonl line), a JSON file (e.g. another run's "
                      "winners/1/architecture.json, or that directory), or the id of a candidate scored in MODEL_DIR")


def make_main(step, existing=False, given=None):
    """The ``main`` of a binary that runs ``step(search_run)`` (``existing``: see ``run_step``).

    ``given``: ``(help, run, summary)`` for a binary that also takes one
    given architecture, ``--architecture=SPEC`` (defined here; ``help`` says
    what it does): with it the binary runs ``run(search_run, SPEC)`` instead
    and prints ``summary(search_run, result)`` on the chief."""
    from absl import app

    if given is not None:
        help_text, run, summary = given
        flags.DEFINE_string("architecture", None, f"{help_text} The architecture: {ARCHITECTURE_FORMS}.")

        def _step(search_run):
            if FLAGS.architecture is None:
                return step(search_run)
            result = run(search_run, FLAGS.architecture)
            if search_run.chief:
                print(summary(search_run, result), flush=True)
            return result
    else:
        _step = step

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        run_step(_step, existing)

    def main():
        define_flags()
        app.run(_main)

    return main
