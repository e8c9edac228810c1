"""Step 3: retrain the best candidates stand-alone, evaluate on the test split, export SavedModels.

    python -m experiments.retrain --model_dir=DIR [--preset=quick] [--helpfull]
    python -m experiments.retrain --model_dir=DIR --architecture=FILE|JSON|ID   # one given architecture
"""

from absl import flags

from experiments import common

flags.DEFINE_string("architecture", None,
                    "Retrain this architecture instead of the winners, as winner 1 is retrained, into "
                    "MODEL_DIR/architectures/<id>/: its JSON text (or a candidates.jsonl line), a JSON file (e.g. "
                    "another run's winners/1/architecture.json, or that directory), or the id of a candidate "
                    "scored in MODEL_DIR. MODEL_DIR may be new (no search needed); it keeps the search space "
                    "flags the architecture must fit.")
FLAGS = flags.FLAGS


def _step(search_run):
    if FLAGS.architecture is None:
        return common.report(search_run, search_run.retrain())
    result = search_run.retrain_architecture(FLAGS.architecture)
    if search_run.chief:
        print(search_run.architecture_summary(result), flush=True)
    return result


main = common.make_main(_step, existing=lambda: FLAGS.architecture is None)

if __name__ == "__main__":
    main()
