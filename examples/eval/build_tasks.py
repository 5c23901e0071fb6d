"""Regenerate the synthetic offline evaluation data in examples/eval/ (deterministic; the files are committed).

    python examples/eval/build_tasks.py

Four lm-eval tasks (YAML next to their data in tasks/) and a chat-format holdout file:

- ``hone_arith_mc``          multiple choice (log-likelihood): "What is a plus b?" -- the skill that
                             examples/data/chat.jsonl teaches.
- ``hone_capitals_gen``      generate_until, exact match: the capitals answered in examples/data/chat.jsonl.
- ``hone_retention_facts``   multiple choice: facts the tiny model is pre-trained on (hone's bundled corpus),
                             as cloze sentences with distractors -- what fine-tuning should not make it forget.
- ``hone_retention_corpus``  loglikelihood_rolling: perplexity on paragraphs of the bundled corpus.
- ``holdout.jsonl``          chat samples like examples/data/chat.jsonl but not in it (for ``--eval-data``).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

CAPITALS = {"Italy": "Rome", "France": "Paris", "Norway": "Oslo", "Japan": "Tokyo", "Egypt": "Cairo",
            "Kenya": "Nairobi", "Chile": "Santiago", "Spain": "Madrid", "Canada": "Ottawa", "Peru": "Lima"}

# (context, correct continuation, distractors): sentences repeated in hone/models/corpus/tiny_corpus.txt
FACTS = [
    ("The Earth orbits the Sun once a", " year.", [" day.", " week.", " month."]),
    ("Plants need light and water to", " grow.", [" sing.", " fly.", " sleep."]),
    ("The capital of Japan is", " Tokyo.", [" Paris.", " Rome.", " Cairo."]),
    ("Water boils at one hundred degrees Celsius at", " sea level.", [" night.", " the market.", " noon."]),
    ("Owls usually hunt at", " night.", [" noon.", " school.", " sea level."]),
    ("Two plus two is", " four.", [" five.", " three.", " six."]),
    ("Ten times ten is", " one hundred.", [" twenty.", " ten.", " fifty."]),
    ("A triangle has", " three sides.", [" four sides.", " five sides.", " eight legs."]),
    ("Bees make honey from the nectar of", " flowers.", [" stones.", " clouds.", " rivers."]),
    ("The capital of France is", " Paris.", [" Tokyo.", " Rome.", " Oslo."]),
    ("A week has", " seven days.", [" six days.", " ten days.", " three sides."]),
    ("Ice is frozen", " water.", [" bread.", " light.", " honey."]),
    ("A square has four equal", " sides.", [" days.", " legs.", " hours."]),
    ("The Pacific is the largest", " ocean.", [" river.", " forest.", " mountain."]),
    ("Question: What is the capital of Italy? Answer: The capital of Italy is", " Rome.", [" Paris.", " Tokyo.", " Lima."]),
    ("Question: How many legs does a spider have? Answer: A spider has", " eight legs.", [" six legs.", " four legs.", " two legs."]),
    ("Question: What do cows drink? Answer: Cows drink", " water.", [" honey.", " light.", " bread."]),
    ("Question: How many hours are in a day? Answer: There are", " twenty-four hours in a day.", [" seven hours in a day.", " ten hours in a day.", " one hundred hours in a day."]),
    ("Question: What color is the sky on a clear day? Answer: The sky is", " blue on a clear day.", [" green on a clear day.", " black on a clear day.", " yellow on a clear day."]),
]

HOLDOUT_CAPITALS = {"Germany": "Berlin", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin",
                    "Poland": "Warsaw", "Austria": "Vienna"}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _train_pairs() -> set[tuple[int, int]]:
    """(a, b) additions that examples/data/chat.jsonl trains on (kept out of the holdout file)."""
    pairs = set()
    for line in (HERE.parent / "data" / "chat.jsonl").read_text().splitlines():
        for m in json.loads(line)["messages"]:
            words = m["content"].rstrip("?").split()
            if m["role"] == "user" and words[:2] == ["What", "is"] and len(words) == 5 and words[3] == "plus":
                pairs.add((int(words[2]), int(words[4])))
    return pairs


def main(out: Path = HERE) -> None:
    """Write tasks/data/*.jsonl and holdout.jsonl under ``out`` (default: examples/eval itself)."""
    data = out / "tasks" / "data"
    rng = random.Random(8)
    arith = []
    for _ in range(24):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        s = a + b
        wrong = rng.sample(sorted({s - 10, s - 1, s + 1, s + 2, s + 10} - {s} - {x for x in range(-20, 1)}), 3)
        choices = [f" {x}." for x in [s] + wrong]
        order = list(range(4))
        rng.shuffle(order)
        arith.append({"question": f"What is {a} plus {b}?", "prefix": f"{a} plus {b} is",
                      "choices": [choices[i] for i in order], "label": order.index(0)})
    _jsonl(data / "arith_mc.jsonl", arith)

    _jsonl(data / "capitals_gen.jsonl", [{"question": f"What is the capital of {c}?",
                                          "answer": f"The capital of {c} is {cap}."} for c, cap in CAPITALS.items()])

    facts = []
    for ctx, good, bad in FACTS:
        order = list(range(4))
        rng.shuffle(order)
        options = [good] + bad
        facts.append({"context": ctx, "choices": [options[i] for i in order], "label": order.index(0)})
    _jsonl(data / "retention_facts.jsonl", facts)

    corpus = (HERE.parent.parent / "hone" / "models" / "corpus" / "tiny_corpus.txt").read_text()
    paragraphs = [p.strip() for p in corpus.split("\n\n") if p.strip()]
    _jsonl(data / "retention_corpus.jsonl", [{"text": p} for p in paragraphs[:16]])

    seen = _train_pairs()
    holdout = []
    while len(holdout) < 12:
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        holdout.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                     {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]})
    geo = "You are a concise geography assistant."
    holdout += [{"messages": [{"role": "system", "content": geo},
                              {"role": "user", "content": f"What is the capital of {c}?"},
                              {"role": "assistant", "content": f"The capital of {c} is {cap}."}]}
                for c, cap in HOLDOUT_CAPITALS.items()]
    _jsonl(out / "holdout.jsonl", holdout)


if __name__ == "__main__":
    main()
