"""Step 2: score candidates with the trained proxy; appends to candidates.jsonl and resumes.

    python -m experiments.score --model_dir=DIR [--preset=quick] [--helpfull]
"""

from experiments import common

main = common.make_main(lambda r: r.score(), existing=True)

if __name__ == "__main__":
    main()
