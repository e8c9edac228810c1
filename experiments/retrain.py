"""Step 3: retrain the best candidates stand-alone, evaluate on the test split, export SavedModels.

    python -m experiments.retrain --model_dir=DIR [--preset=quick] [--helpfull]
"""

from experiments import common

main = common.make_main(lambda r: common.report(r, r.retrain()), existing=True)

if __name__ == "__main__":
    main()
