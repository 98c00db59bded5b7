"""The bundled example datasets: one deterministic text task, written in every supported format.

Run as: python -m engine.examples static/examples

The task is a set of word transformations (reverse, sort, uppercase, count, first/last word)
over a small vocabulary, so even the tiny demo model visibly learns it: the loss falls within
a few hundred steps on a CPU. The same generator also feeds the demo tokenizer's training text.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

WORDS = (
    "red blue green yellow purple orange black white silver golden "
    "cat dog fox owl bear wolf deer frog fish bird "
    "apple pear plum grape lemon melon cherry peach mango kiwi "
    "river stone cloud tree leaf wind snow rain star moon"
).split()

TASKS = {
    "reverse": ("Reverse the order of the words.", lambda ws: " ".join(reversed(ws))),
    "sort": ("Sort the words alphabetically.", lambda ws: " ".join(sorted(ws))),
    "upper": ("Write the words in capital letters.", lambda ws: " ".join(ws).upper()),
    "count": ("How many words are there?", lambda ws: str(len(ws))),
    "first": ("What is the first word?", lambda ws: ws[0]),
    "last": ("What is the last word?", lambda ws: ws[-1]),
}
SYSTEM = "You are a precise assistant. Answer with the result only."


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n (instruction, input, output) triples, the same for the same seed."""
    rng = random.Random(seed)
    names = sorted(TASKS)
    pairs = []
    for _ in range(n):
        task = rng.choice(names)
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        instruction, fn = TASKS[task]
        pairs.append((instruction, " ".join(words), fn(words)))
    return pairs


def alpaca_records(n: int = 240, seed: int = 0) -> list[dict]:
    return [{"instruction": i, "input": x, "output": y} for i, x, y in make_pairs(n, seed)]


def chat_records(n: int = 120, seed: int = 1) -> list[dict]:
    """Multi-turn conversations: two or three tasks asked in a row, each answered."""
    rng = random.Random(seed)
    pairs = make_pairs(n * 3, seed)
    records = []
    for k in range(n):
        turns = rng.randint(1, 3)
        messages = [{"role": "system", "content": SYSTEM}] if k % 2 == 0 else []
        for instruction, x, y in pairs[3 * k: 3 * k + turns]:
            messages.append({"role": "user", "content": f"{instruction}\n{x}"})
            messages.append({"role": "assistant", "content": y})
        records.append({"messages": messages})
    return records


def sharegpt_records(n: int = 120, seed: int = 2) -> list[dict]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"conversations": [{"from": names[m["role"]], "value": m["content"]}
                               for m in r["messages"]]} for r in chat_records(n, seed)]


def completion_records(n: int = 240, seed: int = 3) -> list[dict]:
    return [{"prompt": f"{i}\n{x}\nAnswer:", "completion": f" {y}"}
            for i, x, y in make_pairs(n, seed)]


def text_records(n: int = 200, seed: int = 4) -> list[dict]:
    return [{"text": f"{i} {x} -> {y}"} for i, x, y in make_pairs(n, seed)]


def corpus(seed: int = 5) -> list[str]:
    """Text the demo tokenizer is trained on: every example, plus the template words."""
    texts = [f"{i}\n{x}\n{y}" for i, x, y in make_pairs(2000, seed)]
    texts += [SYSTEM, "system user assistant human gpt Answer: ->"] * 50
    return texts


def write_examples(folder: str | Path) -> list[Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def dump_json(name: str, records: list[dict]) -> None:
        path = out / name
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", "utf-8")
        written.append(path)

    def dump_jsonl(name: str, records: list[dict]) -> None:
        path = out / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        "utf-8")
        written.append(path)

    dump_json("alpaca.json", alpaca_records())
    dump_jsonl("chat.jsonl", chat_records())
    dump_json("sharegpt.json", sharegpt_records())
    dump_jsonl("completion.jsonl", completion_records())
    dump_jsonl("text.jsonl", text_records())
    path = out / "alpaca.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(alpaca_records(120, seed=6))
    written.append(path)
    return written


if __name__ == "__main__":
    for p in write_examples(sys.argv[1] if len(sys.argv) > 1 else "static/examples"):
        print(p)
