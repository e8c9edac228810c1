"""Step 2: score candidates with the trained proxy; appends to candidates.jsonl and resumes.

    python -m experiments.score --model_dir=DIR [--preset=quick] [--helpfull]
    python -m experiments.score --model_dir=DIR --architecture=FILE|JSON|ID   # one given architecture
"""

from experiments import common

main = common.make_main(
    lambda r: r.score(), existing=True,
    given=("Score this architecture with the trained proxy instead of searching, and print its score and where it "
           "would rank among the candidates scored in MODEL_DIR (written to MODEL_DIR/architectures/<id>/"
           "score.json; candidates.jsonl is left as it is).",
           lambda r, spec: r.score_architecture(spec), lambda r, rec: r.score_summary(rec)))

if __name__ == "__main__":
    main()
