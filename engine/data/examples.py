"""The bundled example datasets: one deterministic text task, written in every supported format.

Run as: python -m engine.data.examples static/examples

preference.jsonl (DPO, IPO, SimPO, ORPO) and kto.jsonl hold the same task for preference
tuning: the right answer against a plausible mistake (the words left in their order, another
word, a count off by one, ...), as chosen / rejected pairs or as completions labelled true or
false.

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


def make_tasks(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """n (task name, words) draws, the same for the same seed (make_pairs' draws)."""
    rng = random.Random(seed)
    names = sorted(TASKS)
    draws = []
    for _ in range(n):
        task = rng.choice(names)
        draws.append((task, [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]))
    return draws


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n (instruction, input, output) triples, the same for the same seed."""
    return [(TASKS[task][0], " ".join(words), TASKS[task][1](words))
            for task, words in make_tasks(n, seed)]


def mistake(task: str, words: list[str], rng: random.Random) -> str:
    """A plausible wrong answer to the task (never the right one): the words left in their
    order, lower case, another word, a count off by one; else one word swapped for another."""
    right = TASKS[task][1](words)
    if task in ("reverse", "sort"):
        tries = [" ".join(words), " ".join(sorted(words, reverse=True)), " ".join(words[1:])]
    elif task == "upper":
        tries = [" ".join(words), " ".join(w.capitalize() for w in words),
                 " ".join(words[:-1]).upper() + " " + words[-1]]
    elif task == "count":
        tries = [str(len(words) + rng.choice((-1, 1)))]
    elif task == "first":
        tries = [words[-1], words[1], rng.choice(WORDS)]
    else:  # last
        tries = [words[0], words[-2], rng.choice(WORDS)]
    for wrong in tries:
        if wrong != right:
            return wrong
    k = rng.randrange(len(words))
    other = rng.choice([w for w in WORDS if w != words[k]])
    return TASKS[task][1](words[:k] + [other] + words[k + 1:])


def _prompt(task: str, words: list[str]) -> list[dict]:
    return [{"role": "user", "content": f"{TASKS[task][0]}\n{' '.join(words)}"}]


def preference_records(n: int = 120, seed: int = 7) -> list[dict]:
    """TRL's conversational preference format: prompt (a user turn), chosen (the right answer),
    rejected (a plausible mistake), each a list of messages."""
    rng = random.Random(seed + 1000)
    return [{"prompt": _prompt(task, words),
             "chosen": [{"role": "assistant", "content": TASKS[task][1](words)}],
             "rejected": [{"role": "assistant", "content": mistake(task, words, rng)}]}
            for task, words in make_tasks(n, seed)]


def kto_records(n: int = 120, seed: int = 8) -> list[dict]:
    """TRL's conversational KTO format: prompt, completion, label (true: the right answer,
    false: a plausible mistake), half of each."""
    rng = random.Random(seed + 1000)
    labels = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(labels)
    return [{"prompt": _prompt(task, words),
             "completion": [{"role": "assistant", "content": TASKS[task][1](words) if good
                             else mistake(task, words, rng)}],
             "label": good} for (task, words), good in zip(make_tasks(n, seed), labels)]


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
    dump_jsonl("preference.jsonl", preference_records())
    dump_jsonl("kto.jsonl", kto_records())
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
