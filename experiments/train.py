"""Step 1: train the proxy of --method; resumes from its last checkpoint.

    python -m experiments.train --model_dir=DIR [--preset=quick] [--helpfull]
"""

from experiments import common

main = common.make_main(lambda r: r.train_proxy())

if __name__ == "__main__":
    main()
