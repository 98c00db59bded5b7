"""GRPO's reward functions (engine/training/rewards.py): each built-in on the cases its docs
promise, TRL's conversational completions, custom functions installed in FTSTUDIO_HOME/rewards
and loaded by name (listing them runs no code), and the errors that name the function."""

from __future__ import annotations

import importlib.util

import pytest

from engine.training import rewards as R
from engine.training.rewards import RewardError, resolve, score


def conv(text):
    return [{"role": "assistant", "content": text}]


def run(name, completions, args=None, **columns):
    funcs = resolve([{"name": name, "args": args or {}}])
    return score(funcs, ["p"] * len(completions), completions, columns).per_func[:, 0].tolist()


def test_exact_match_uses_the_evaluations_normalisation():
    assert run("exact_match", ["  Paris!", "paris france", conv("PARIS")],
               answer=["paris", "paris", "Paris"]) == [1.0, 0.0, 1.0]
    assert run("exact_match", ["42"], {"column": "solution"}, solution=[42]) == [1.0]


def test_contains_and_regex():
    assert run("contains", ["The capital is Paris.", "Lyon"], {"text": "paris"}) == [1.0, 0.0]
    assert run("contains", ["Paris"], {"text": "paris", "case_sensitive": True}) == [0.0]
    fmt = {"pattern": r"<answer>\d+</answer>", "full": True}
    assert run("regex", ["<answer>12</answer>", "so <answer>12</answer>", " <answer>3</answer>\n"],
               fmt) == [1.0, 0.0, 1.0]
    assert run("regex", ["so <answer>12</answer>"], {"pattern": r"<answer>\d+"}) == [1.0]


def test_json_valid_with_a_fence_and_without():
    assert run("json_valid", ['{"a": 1}', '```json\n[1, 2]\n```', "{'a': 1}", "nope"]) == \
        [1.0, 1.0, 0.0, 0.0]


def test_json_schema_is_refused_clearly_without_jsonschema():
    problems = R.spec_problems([{"name": "json_valid", "args": {"schema": {"type": "object"}}}])
    if importlib.util.find_spec("jsonschema") is None:
        assert problems and "needs the jsonschema package, which is not installed" in problems[0]
    else:
        assert problems == []
        assert run("json_valid", ['{"a": 1}', "[1]"], {"schema": {"type": "object"}}) == \
            [1.0, 0.0]


def test_numeric_match_reads_boxed_answers_and_last_numbers():
    got = run("numeric_match", ["so \\boxed{1,234} and 7", "it is 3.50", "about -2",
                                "\\boxed{\\frac{1}{2}}", "no number"],
              answer=["#### 1234", "3.5", -2, "0.5", "1"])
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert R.answer_number("x \\boxed{2{}} y 9") == 2.0


def test_length_penalty_counts_completion_tokens():
    funcs = resolve([{"name": "length_penalty", "args": {"target": 4}}])
    s = score(funcs, ["p"] * 3, ["a", "b", "c"], {}, completion_ids=[[1] * 2, [1] * 4, [1] * 8])
    assert s.per_func[:, 0].tolist() == [0.0, 0.0, -1.0]


def test_weights_and_none(tmp_path, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_HOME", str(tmp_path))
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "mine.py").write_text(
        "def half(prompts, completions, **kw):\n"
        "    return [None if c[0]['content'] == 'skip' else 0.5 for c in completions]\n")
    funcs = resolve([{"name": "mine.half"}, {"name": "contains", "weight": 2.0,
                                             "args": {"text": "a"}}])
    s = score(funcs, [[{"role": "user", "content": "q"}]] * 3,
              [conv("a"), conv("skip"), conv("b")], {})
    assert s.names == ["mine_half", "contains"]
    assert s.total.tolist() == [2.5, 0.0, 0.5]


def test_a_trl_reward_function_runs_unchanged(tmp_path):
    """The reward from TRL's docs (conversational completions, a dataset column by name)."""
    (tmp_path / "trl_style.py").write_text(
        "import re\n\n"
        "def format_reward(completions, **kwargs):\n"
        "    pattern = r'^<think>.*?</think><answer>.*?</answer>$'\n"
        "    contents = [c[0]['content'] for c in completions]\n"
        "    return [1.0 if re.match(pattern, x) else 0.0 for x in contents]\n\n"
        "def accuracy(completions, solution, **kwargs):\n"
        "    return [float(c[0]['content'].endswith(s)) for c, s in zip(completions, solution)]\n")
    funcs = resolve([{"name": "trl_style.format_reward"}, {"name": "trl_style.accuracy"}],
                    folder=tmp_path)
    s = score(funcs, ["p", "p"], [conv("<think>x</think><answer>4</answer>"), conv("4")],
              {"solution": ["</answer>", "4"]}, completion_ids=[[1], [2]])
    assert s.per_func.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_listing_runs_no_code_and_install_checks_the_file(tmp_path):
    folder = tmp_path / "rewards"
    evil = tmp_path / "loud.py"
    evil.write_text("raise SystemExit('ran at import')\n\ndef r(prompts, completions, **kw):\n"
                    "    '''Always one.'''\n    return [1.0] * len(completions)\n")
    assert R.install(evil, folder) == ["loud.r"]
    assert R.installed(folder) == {"loud.r": "Always one."}
    with pytest.raises(RewardError, match="loud.py failed to import: SystemExit: ran at import"):
        R.load_custom("loud.r", folder)
    bad = tmp_path / "bad-name.py"
    bad.write_text("def r(p, c): return []\n")
    with pytest.raises(RewardError, match="must be NAME.py with NAME a Python identifier"):
        R.install(bad, folder)
    broken = tmp_path / "broken.py"
    broken.write_text("def r(:\n")
    with pytest.raises(RewardError, match="broken.py line 1: not valid Python"):
        R.install(broken, folder)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(RewardError, match="defines no public function"):
        R.install(empty, folder)
    quiet = tmp_path / "quiet.py"
    quiet.write_text("def r(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    R.install(quiet, folder)
    with pytest.raises(RewardError, match="unknown reward 'quiet.nope': quiet.py has no "
                                          r"function nope \(it has: quiet.r\)"):
        R.load_custom("quiet.nope", folder)
    with pytest.raises(RewardError, match=r"no .*other.py \(installed: loud.r, quiet.r\)"):
        R.load_custom("other.r", folder)


def test_spec_problems_name_each_entry():
    problems = R.spec_problems([{"name": "regex", "args": {"pattern": "("}},
                                {"name": "exact_match", "weight": "x", "args": {"col": 1}},
                                {"name": "contains", "extra": 1}, "bare", {"name": "regex",
                                                                           "args": {"pattern": "a"}}])
    text = "\n".join(problems)
    assert "[0] regex: pattern is not a valid regular expression" in text
    assert "[1] exact_match: weight 'x' must be a number" in text
    assert "[1] exact_match: unknown argument 'col'; exact_match takes column" in text
    assert "[2] contains: unknown key(s) extra" in text
    assert "[3]: each entry needs a name" in text
    assert "names regex more than once" in text
