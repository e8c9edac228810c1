"""Step 3: retrain the best candidates stand-alone, evaluate on the test split, export SavedModels.

    python -m experiments.retrain --model_dir=DIR [--preset=quick] [--helpfull]
    python -m experiments.retrain --model_dir=DIR --architecture=FILE|JSON|ID   # one given architecture
"""

from experiments import common

main = common.make_main(
    lambda r: common.report(r, r.retrain()), existing=lambda: common.FLAGS.architecture is None,
    given=("Retrain this architecture instead of the winners, as winner 1 is retrained, into "
           "MODEL_DIR/architectures/<id>/. MODEL_DIR may be new (no search needed); it keeps the search space "
           "flags the architecture must fit.",
           lambda r, spec: r.retrain_architecture(spec), lambda r, result: r.architecture_summary(result)))

if __name__ == "__main__":
    main()
