"""Step 2: score candidates with the trained proxy; appends to candidates.jsonl and resumes.

    python -m experiments.score --model_dir=DIR [--preset=quick] [--helpfull]
"""

from absl import app

from experiments import common


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.run_step(lambda r: r.score())


def main():
    common.define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
