"""Full search: train the proxy, score candidates, retrain and export the winners.

    python -m experiments.run --model_dir=DIR [--preset=quick] [--helpfull]
"""

from absl import app

from experiments import common


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.run_step(lambda r: r.run())


def main():
    common.define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
