"""Step 1: train the proxy (the one-shot model); resumes from its last checkpoint.

    python -m experiments.train --model_dir=DIR [--preset=quick] [--helpfull]
"""

from absl import app

from experiments import common


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.run_step(lambda r: r.train_proxy())


def main():
    common.define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
