"""Writes the .test run set's tiny data: a few rows of random words in the GLUE (RTE, STS-B)
and SQuAD v1.1 layouts, the same rows every time (seeded). Generated rather than committed:
no dataset file is kept in git, not even a synthetic one.

    python .test/make_data.py            # -> .test/data/glue, .test/data/squad
    python .test/make_data.py OUT_DIR    # -> OUT_DIR/glue, OUT_DIR/squad
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORDS = "the a cat dog sat on mat big small red blue house tree runs walks near far".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_glue(root: Path, rng: random.Random) -> None:
    rte, stsb = root / "RTE", root / "STS-B"
    rte.mkdir(parents=True, exist_ok=True)
    stsb.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 24), ("dev", 12)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        rows += [f"{i}\t{sentence(rng, 6)}\t{sentence(rng, 4)}\t{rng.choice(['entailment', 'not_entailment'])}"
                 for i in range(count)]
        (rte / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        rows += [f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{sentence(rng, 5)}\t{sentence(rng, 5)}\t{rng.uniform(0, 5):.2f}"
                 for i in range(count)]
        (stsb / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def write_squad(root: Path, rng: random.Random) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 16), ("dev", 8)):
        paragraphs = []
        for i in range(count):
            context = sentence(rng, 8)
            words = context.split()
            k = rng.randrange(len(words))
            start = len(" ".join(words[:k])) + (1 if k else 0)
            paragraphs.append({"context": context, "qas": [{
                "id": f"{split}{i}", "question": f"where {sentence(rng, 2)}",
                "answers": [{"text": words[k], "answer_start": start}]}]})
        data = {"version": "1.1", "data": [{"title": f"t{split}", "paragraphs": paragraphs}]}
        (root / f"{split}-v1.1.json").write_text(json.dumps(data, indent=1) + "\n")


def write_data(out_dir: Path) -> None:
    rng = random.Random(0)
    write_glue(out_dir / "glue", rng)
    write_squad(out_dir / "squad", rng)


if __name__ == "__main__":
    write_data(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data")
