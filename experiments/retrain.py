"""Step 3: retrain the best candidates stand-alone, evaluate on the test split, export SavedModels.

    python -m experiments.retrain --model_dir=DIR [--preset=quick] [--helpfull]
"""

from absl import app

from experiments import common


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.run_step(lambda r: r.retrain())


def main():
    common.define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
