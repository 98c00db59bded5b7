"""The benchmark dataset: alpaca records whose lengths spread like real instruction data.

Run as: python -m bench.dataset OUT.json [--records 1000] [--seed 0]

Real instruction sets are mostly short with a long tail: many one-line answers, some essays.
Here prompt and response lengths (in words) are drawn from lognormal distributions (medians
PROMPT_MEDIAN and RESPONSE_MEDIAN words, spreads PROMPT_SIGMA and RESPONSE_SIGMA), built from the
example task's words (engine/examples.py) so the demo tokenizer spends about one token per
word. The response applies the instruction to the input and repeats it to the drawn length, so
a model can learn it. The same seed gives the same file.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

from engine.examples import TASKS, WORDS

PROMPT_MEDIAN, PROMPT_SIGMA = 12, 0.8
RESPONSE_MEDIAN, RESPONSE_SIGMA = 45, 0.9
#: longest prompt / response in words (longer draws are cut; max_seq_len truncates further)
LONGEST = 1500
BENCH_TASKS = ("reverse", "sort", "upper")


def lognormal_words(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, min(LONGEST, round(rng.lognormvariate(math.log(median), sigma))))


def bench_records(n: int = 1000, seed: int = 0) -> list[dict[str, str]]:
    """n alpaca records (instruction, input, output) with lognormal prompt/response lengths."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        instruction, fn = TASKS[rng.choice(BENCH_TASKS)]
        words = [rng.choice(WORDS) for _ in range(lognormal_words(rng, PROMPT_MEDIAN,
                                                                   PROMPT_SIGMA))]
        answer = fn(words).split()
        length = lognormal_words(rng, RESPONSE_MEDIAN, RESPONSE_SIGMA)
        output = [answer[i % len(answer)] for i in range(length)]
        records.append({"instruction": instruction, "input": " ".join(words),
                        "output": " ".join(output)})
    return records


def write_bench_dataset(path: str | Path, n: int = 1000, seed: int = 0) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bench_records(n, seed), ensure_ascii=False) + "\n", "utf-8")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT.json")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_bench_dataset(args.out, args.records, args.seed))
    sys.exit(0)
