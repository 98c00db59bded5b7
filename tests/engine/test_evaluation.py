"""Generation evaluation on the tiny model: held-out prompts and references, batched greedy
answers that stop at the template's end of turn, base vs tuned in training and in an eval of a
finished run, and the record the studio shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, TrainConfig, check
from engine.evaluation.evaluate import (Answer, EvalError, EvalExample, _answer, card_line, change_of,
                               end_of_turn_id, evaluate_run, file_examples, filter_rows,
                               generate_answers, prompt_ids, stop_token_ids, to_csv, to_example)
from engine.training.reporter import ListReporter
from engine.training.loop import run
from eval_data import LEARNS, yes_data


def config(tiny_model, data: Path, out: Path, **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.data.train, cfg.output_dir = str(tiny_model), str(data), str(out)
    cfg.data.max_seq_len, cfg.data.val_fraction = 64, 0.2
    cfg.train.eval_every, cfg.train.save_every = 0, 0
    for k, v in {**LEARNS, **train}.items():
        setattr(cfg.train, k, v)
    return cfg


def test_examples_take_the_last_assistant_turn_as_reference():
    convo = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
             {"role": "assistant", "content": "a2"}]
    e = to_example("line 3", convo, "messages")
    assert e.reference == "a2" and e.prompt == convo[:4] and e.shown_prompt == "q2"
    assert to_example("line 4", convo[:2], "messages") is None     # nothing to answer
    c = to_example("line 5", ("Translate: cat ->", " chat"), "completion")
    assert (c.prompt, c.reference) == ("Translate: cat ->", " chat")
    assert to_example("line 6", "raw text", "text") is None


def test_file_examples_by_format_and_text_refused(examples, tmp_path):
    chat, fmt = file_examples(examples / "chat.jsonl")
    assert fmt == "chat" and chat and all(e.reference for e in chat)
    alpaca, _ = file_examples(examples / "alpaca.json")
    assert alpaca[0].prompt[-1]["role"] == "user"
    text = tmp_path / "t.jsonl"
    text.write_text('{"text": "just text"}\n', encoding="utf-8")
    with pytest.raises(EvalError, match="no answer to compare with"):
        file_examples(text)


def test_stop_tokens_are_the_templates_end_of_turn_and_eos(tiny_tokenizer):
    from engine.data import DEFAULT_CHAT_TEMPLATE

    tok = tiny_tokenizer
    assert tok.chat_template  # the demo tokenizer's own (<|im_start|>/<|im_end|> style)
    rendered = tok.apply_chat_template([{"role": "assistant", "content": "X"}], tokenize=False)
    turn_end = end_of_turn_id(tok)
    assert turn_end is not None and tok.convert_ids_to_tokens(turn_end) in rendered
    assert stop_token_ids(tok)[0] == turn_end and tok.eos_token_id in stop_token_ids(tok)
    saved = tok.chat_template
    try:
        tok.chat_template = DEFAULT_CHAT_TEMPLATE   # ends assistant turns with EOS
        assert end_of_turn_id(tok) == tok.eos_token_id
    finally:
        tok.chat_template = saved


def test_an_answer_ends_at_its_first_stop_token(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok("yes sir", add_special_tokens=False)["input_ids"]
    stop = end_of_turn_id(tok)
    cut = _answer(tok, ids + [stop] + ids, {stop})
    assert cut == Answer("yes sir", True, len(ids) + 1)
    ran_out = _answer(tok, ids, {stop})
    assert ran_out.text == "yes sir" and not ran_out.stopped


def test_prompt_ids_match_what_training_renders(tiny_tokenizer, examples):
    from engine.data import Encoder

    tok = tiny_tokenizer
    convo = [{"role": "user", "content": "reverse: a b c"}, {"role": "assistant",
                                                             "content": "c b a"}]
    enc = Encoder(tok, "messages").encode(convo)
    prompt = prompt_ids(tok, to_example("x", convo, "messages"))
    assert enc.input_ids[:len(prompt)] == prompt      # training's sequence starts with it
    assert enc.labels[len(prompt)] != -100            # and the answer is what it trains


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(tiny_model, tiny_tokenizer,
                                                               examples):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    found, _ = file_examples(examples / "alpaca.json")
    some = found[:7]                  # prompts of different lengths in one batch
    batched = generate_answers(model, tiny_tokenizer, some, max_new_tokens=12, batch_size=4)
    alone = generate_answers(model, tiny_tokenizer, some, max_new_tokens=12, batch_size=1)
    assert [a.text for a in batched] == [a.text for a in alone]
    assert all(a.new_tokens <= 12 for a in batched)
    assert not model.training


def test_training_ends_with_base_vs_tuned_answers(tiny_model, examples, home, tmp_path):
    cfg = config(tiny_model, yes_data(tmp_path / "yes.json"), tmp_path / "run")
    reporter = ListReporter()
    result = run(cfg, reporter)
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["n"] == 12 and record["step"] == result.steps == 30
    em = record["metrics"]["exact_match"]
    assert em["base"] == 0.0 and em["tuned"] >= 0.9, em
    assert em["delta_ci"][0] > 0.5                       # a gain the interval can tell
    assert all(r["reference"] == "yes" for r in record["rows"])
    assert all(r["tuned_stopped"] for r in record["rows"])   # it learned to end its turn
    assert (tmp_path / "run" / "eval" / "base.json").is_file()
    gen = [r for r in reporter.records if "gen_exact_match" in r]
    assert [r["step"] for r in gen] == [30] and gen[0]["gen_exact_match"] == em["tuned"]
    assert result.metrics["gen_exact_match"] == em["tuned"]
    assert any(line.startswith("eval generate at step 30: exact match 0% \u2192")
               for line in reporter.lines)
    line = card_line(record)
    assert line.startswith("exact match 0% \u2192 ") and "12 held-out records" in line

    # the same run evaluated again as a finished run folder, on a file of its own
    again = evaluate_run(tmp_path / "run", log=lambda line: None)
    assert again["metrics"]["exact_match"]["tuned"] == em["tuned"]
    assert [r["tuned"] for r in again["rows"]] == [r["tuned"] for r in record["rows"]]
    extra = yes_data(tmp_path / "more.json", 5)
    other = evaluate_run(tmp_path / "run", extra, max_new_tokens=4,
                         out=tmp_path / "other.json", log=lambda line: None)
    assert other["n"] == 5 and other["max_new_tokens"] == 4 and other["source"].startswith(
        "more.json")
    assert (tmp_path / "other.json").is_file()


def test_every_n_steps_is_a_live_curve_and_can_stop_early(tiny_model, home, tmp_path):
    cfg = config(tiny_model, yes_data(tmp_path / "yes.json"), tmp_path / "run",
                 eval_generate="every 5", max_steps=40, early_stopping_patience=2,
                 early_stopping_metric="gen_exact_match")
    reporter = ListReporter()
    result = run(cfg, reporter)
    steps = [r["step"] for r in reporter.records if "gen_exact_match" in r]
    assert steps[:2] == [5, 10] and steps == sorted(set(steps))
    # exact match reaches 1.0 and cannot improve on it: patience 2 stops two evals later
    assert result.stopped_early and result.steps < 40
    assert any("early stopping: gen_exact_match" in line for line in reporter.lines)
    base_runs = [line for line in reporter.lines if "base answered" in line]
    assert len(base_runs) == 1                           # the base answers once


def test_resumed_run_reads_the_base_answers_it_kept(tiny_model, home, tmp_path):
    cfg = config(tiny_model, yes_data(tmp_path / "yes.json"), tmp_path / "run", max_steps=10,
                 save_every=5)
    run(cfg, ListReporter(stop_after_step=5))
    cfg.train.resume_from = "latest"
    reporter = ListReporter()
    run(cfg, reporter)
    assert any("base answers from" in line for line in reporter.lines)
    assert not any("base answered" in line for line in reporter.lines)


def test_off_and_no_split_turn_it_off(tiny_model, home, tmp_path):
    data = yes_data(tmp_path / "yes.json")
    cfg = config(tiny_model, data, tmp_path / "a", eval_generate="off", max_steps=2)
    run(cfg, ListReporter())
    assert not (tmp_path / "a" / "eval.json").exists()
    cfg = config(tiny_model, data, tmp_path / "b", max_steps=2)
    cfg.data.val_fraction = 0
    reporter = ListReporter()
    run(cfg, reporter)
    assert not (tmp_path / "b" / "eval.json").exists()
    assert any("eval generate: off: no validation split" in line for line in reporter.lines)


def test_config_checks_name_the_key(tiny_model, examples):
    cfg = TrainConfig()
    cfg.model.name, cfg.data.train = str(tiny_model), str(examples / "alpaca.json")
    cfg.train.eval_generate, cfg.train.eval_generate_max = "sometimes", 0
    cfg.train.early_stopping_patience, cfg.train.early_stopping_metric = 2, "gen_chrf"
    with pytest.raises(ConfigError) as err:
        check(cfg)
    keys = {p.key for p in err.value.problems}
    assert {"train.eval_generate", "train.eval_generate_max",
            "train.early_stopping_metric"} <= keys
    cfg.train.eval_generate, cfg.train.eval_generate_max = "every 10", 50
    check(cfg)


def _row(base, tuned, ref="yes"):
    from engine.evaluation.metrics import score_answers

    b, t = score_answers([base, tuned], [ref, ref])
    row = {"base": base, "tuned": tuned, "base_scores": b, "tuned_scores": t,
           "where": "line 1", "prompt": "q", "reference": ref, "tuned_stopped": True,
           "base_stopped": False}
    row["change"] = change_of(row)
    return row


def test_rows_are_filed_as_changed_still_wrong_and_worse():
    rows = [_row("no", "yes"), _row("yes", "no"), _row("maybe", "nope"), _row("yes", "Yes!"),
            _row("no", "no")]
    assert [r["change"] for r in rows] == ["improved", "worse", "still wrong", "same",
                                           "still wrong"]
    assert len(filter_rows(rows, "changed")) == 3     # "Yes!" normalises to the base's "yes"
    assert [r["tuned"] for r in filter_rows(rows, "still wrong")] == ["nope", "no"]
    assert [r["tuned"] for r in filter_rows(rows, "got worse")] == ["no"]
    text = to_csv({"rows": rows})
    assert text.splitlines()[0].startswith("where,prompt,reference,base,tuned,change")
    assert len(text.splitlines()) == 6


def test_evaluating_a_folder_without_a_run_says_so(tmp_path):
    with pytest.raises(EvalError, match="no adapter/"):
        evaluate_run(tmp_path)


def test_early_stopping_on_eval_loss_scores_the_kept_adapter(tiny_model, home, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.evaluation.evaluate import file_examples

    cfg = config(tiny_model, yes_data(tmp_path / "yes.json"), tmp_path / "run", max_steps=20,
                 eval_every=2, early_stopping_patience=1, lr=3e-1)   # too high: it gets worse
    # this lr's path (LoRA dropout draws depend on the batch's shape) was found on packed rows
    # under the dense mask; the flat varlen rows train as well but draw other dropout masks
    cfg.model.attn_implementation = "sdpa"
    reporter = ListReporter()
    run(cfg, reporter)
    assert any("scoring the best weights early stopping kept" in line
               for line in reporter.lines)
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 < record["kept_step"] < record["step"]
    # the record's tuned answers are those of adapter/ (what a person downloads)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    kept = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "adapter")
    examples = [e for e in file_examples(tmp_path / "yes.json")[0]
                if e.where in {r["where"] for r in record["rows"]}]
    answers = generate_answers(kept, tok, examples, max_new_tokens=record["max_new_tokens"])
    by_where = {r["where"]: r["tuned"] for r in record["rows"]}
    assert [a.text for a in answers] == [by_where[e.where] for e in examples]
