"""Hostile and absurd configs refused at the door (engine.config.parse_config_text and the
ranges of validate()): config bombs cheaply, every numeric key out of range by name."""

from __future__ import annotations

import time

import pytest

from engine.config import (BOUNDS, ConfigError, MAX_PROBLEM_CHARS, TrainConfig, all_keys,
                           apply_overrides, from_dict, load_config, parse_config_text, validate,
                           _numeric)


def laughs(levels: int) -> str:
    """The "billion laughs" YAML: each anchor repeats the one before nine times."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "train:\n  " + "\n  ".join(lines) + "\n"


def refusal(text: str, longest: int = 1000, **kw) -> str:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        from_dict(parse_config_text(text, "the submitted config", **kw))
    assert time.monotonic() - start < 1.0
    message = str(info.value)
    assert len(message) < longest, message
    return message


def test_alias_bomb_refused_cheaply():
    assert len(laughs(9)) < 1000
    message = refusal(laughs(9))
    assert "holds more than 10,000 values" in message and "train.a" in message
    assert "lol" not in message            # nothing of the value is echoed


def test_a_few_aliases_are_fine():
    data = parse_config_text("method: &m {kind: lora, r: 8}\nx: *m\n")
    assert data["x"] == {"kind": "lora", "r": 8}


@pytest.mark.parametrize("text", ["train:\n  lr: " + "[" * 5000 + "]" * 5000,
                                  "train:\n  lr:\n    " + "- " * 5000 + "x\n"])
def test_deep_nesting_names_the_key(text):
    message = refusal(text)
    assert "train.lr: is nested more than 16 levels deep" in message


def test_deep_json_refused():
    message = refusal('{"train": {"lr": ' + "[" * 5000 + "]" * 5000 + "}}", as_json=True)
    assert "nested too deeply" in message


def test_section_twice_names_both_lines():
    message = refusal("train:\n  lr: 0.1\nmodel:\n  name: x\ntrain:\n  epochs: 2\n")
    assert "train: this section appears twice in the submitted config (lines 1 and 5)" in message
    message = refusal("train:\n  lr: 0.1\n  epochs: 1\n  lr: 0.2\n")
    assert "train.lr: this key appears twice" in message and "(lines 2 and 4)" in message
    assert "set twice" in refusal('{"train": {"lr": 1, "lr": 2}}', as_json=True)


def test_long_text_and_values_are_capped(tmp_path):
    assert "at most 262,144" in refusal("train: " + "x" * 300_000)
    message = refusal("train: " + "y" * 100_000)          # a section that is not a mapping
    assert "must be a mapping" in message and len(message) < 1000
    many = "train:\n" + "".join(f"  k{i}: 1\n" for i in range(3000))
    assert "2990 more unknown settings" in refusal(many, longest=11 * (MAX_PROBLEM_CHARS + 30))
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(9))
    with pytest.raises(ConfigError, match="holds more than"):
        load_config(path)
    with pytest.raises(ConfigError, match="holds more than"):
        apply_overrides(TrainConfig(), ["method.target_modules=" + laughs(9).replace(
            "train:\n  ", "[").replace("\n  ", ", ").rstrip("\n") + "]"])


def test_every_numeric_key_has_a_range_checked_by_name():
    numeric = [k for k in all_keys() if k != "output_dir" and _numeric(k)]
    assert set(numeric) <= set(BOUNDS), set(numeric) - set(BOUNDS)
    for key in numeric:
        for bad in (10 ** 30, float("inf"), -(10 ** 30)):
            cfg = TrainConfig()
            section, _, name = key.partition(".")
            is_int = isinstance(getattr(cfg, section).__dataclass_fields__[name].default, int)
            value = bad if not is_int or bad != float("inf") else 10 ** 20
            setattr(getattr(cfg, section), name, value)
            problems = [p for p in validate(cfg, check_files=False) if p.key == key]
            assert problems, (key, value)
            assert all(len(p.message) <= MAX_PROBLEM_CHARS for p in problems)


def test_issue_values_refused_naming_their_keys():
    cfg = from_dict(parse_config_text(
        f"train:\n  max_steps: {10 ** 30}\n  epochs: 1e300\n  batch_size: 1000000\n"
        "method:\n  r: 1000000000\n  alpha: 1e300\ndata:\n  max_seq_len: 100000000\n"))
    by_key = {p.key: p.message for p in validate(cfg, check_files=False)}
    for key in ("train.max_steps", "train.epochs", "train.batch_size", "method.r",
                "method.alpha", "data.max_seq_len"):
        assert "is out of range: use" in by_key[key], (key, by_key)
    assert "use 1 to 4,096 (8 to 64 is typical)" in by_key["method.r"]


@pytest.mark.parametrize("name", ["a/b c", "owner/na--me", "x/<script>", "a/" + "b" * 97,
                                  "a/b.git"])
def test_invalid_hub_id_refused(name):
    cfg = TrainConfig()
    cfg.model.name = name
    messages = [p.message for p in validate(cfg) if p.key == "model.name"]
    assert messages and "is not a valid hub id" in messages[0], messages


def test_valid_hub_id_and_long_paths():
    cfg = TrainConfig()
    cfg.model.name = "Qwen/Qwen2.5-0.5B-Instruct"
    assert not [p for p in validate(cfg) if p.key == "model.name"]
    cfg.model.name = "m" * 5000
    cfg.data.train = "d" * 5000 + ".json"
    by_key = {p.key: p.message for p in validate(cfg)}
    assert by_key["model.name"] == "is 5,000 characters long; at most 4,096"
    assert by_key["data.train"] == "is 5,005 characters long; at most 4,096"
