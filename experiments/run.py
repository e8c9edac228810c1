"""Full search: train the proxy, score candidates, retrain and export the winners.

    python -m experiments.run --model_dir=DIR [--preset=quick] [--helpfull]
"""

from experiments import common

main = common.make_main(lambda r: common.report(r, r.run()))

if __name__ == "__main__":
    main()
