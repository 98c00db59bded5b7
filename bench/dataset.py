"""The benchmark dataset: alpaca records whose lengths spread like real instruction data.

Run as: python -m bench.dataset OUT.json [--records 1000] [--seed 0] [--longest 512]

Real instruction sets are mostly short with a long tail: many one-line answers, some essays.
Here prompt and response lengths (in words) are drawn from lognormal distributions (medians
PROMPT_MEDIAN and RESPONSE_MEDIAN words, spreads PROMPT_SIGMA and RESPONSE_SIGMA), built from the
example task's words (engine/data/examples.py) so the demo tokenizer spends about one token per
word. The response applies the instruction to the input and repeats it to the drawn length, so
a model can learn it. The same seed gives the same file.

`longest` (the max_seq_len the data is for) stretches the response lengths so that they spread
to it, as long-context data does: the median grows with sqrt(longest / 512) and the spread by
0.1 per doubling, with draws cut at `longest` words (at 512: the original medians, cut at
LONGEST). At 4096 the median response is 124 words, the mean 260, and 1 in 300 records comes
within a tenth of the limit.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

from engine.data.examples import TASKS, WORDS

PROMPT_MEDIAN, PROMPT_SIGMA = 12, 0.8
RESPONSE_MEDIAN, RESPONSE_SIGMA = 45, 0.9
#: longest prompt / response in words (longer draws are cut; max_seq_len truncates further)
LONGEST = 1500
BENCH_TASKS = ("reverse", "sort", "upper")


def lognormal_words(rng: random.Random, median: float, sigma: float, cut: int = LONGEST) -> int:
    return max(1, min(cut, round(rng.lognormvariate(math.log(median), sigma))))


def bench_records(n: int = 1000, seed: int = 0, longest: int = 512) -> list[dict[str, str]]:
    """n alpaca records (instruction, input, output) with lognormal prompt/response lengths
    that spread to `longest` tokens (see the module's docstring)."""
    rng = random.Random(seed)
    stretch = max(1.0, longest / 512)
    median = RESPONSE_MEDIAN * math.sqrt(stretch)
    sigma = RESPONSE_SIGMA + 0.1 * math.log2(stretch)
    cut = LONGEST if longest <= 512 else longest
    records = []
    for _ in range(n):
        instruction, fn = TASKS[rng.choice(BENCH_TASKS)]
        words = [rng.choice(WORDS) for _ in range(lognormal_words(rng, PROMPT_MEDIAN,
                                                                   PROMPT_SIGMA))]
        answer = fn(words).split()
        length = lognormal_words(rng, median, sigma, cut)
        output = [answer[i % len(answer)] for i in range(length)]
        records.append({"instruction": instruction, "input": " ".join(words),
                        "output": " ".join(output)})
    return records


def write_bench_dataset(path: str | Path, n: int = 1000, seed: int = 0, longest: int = 512
                        ) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bench_records(n, seed, longest), ensure_ascii=False) + "\n",
                   "utf-8")
    return out


def records_for_tokens(tokens: int, longest: int = 512) -> int:
    """About how many records of bench_records(longest=...) hold `tokens` tokens (words plus
    about 20 tokens of template each, from 500 drawn records; max_seq_len cuts the longest)."""
    sample = bench_records(500, seed=99, longest=longest)
    mean = sum(min(longest, len(" ".join(r.values()).split()) + 20) for r in sample) / 500
    return max(20, round(tokens / mean))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT.json")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--longest", type=int, default=512)
    args = parser.parse_args()
    print(write_bench_dataset(args.out, args.records, args.seed, args.longest))
    sys.exit(0)
