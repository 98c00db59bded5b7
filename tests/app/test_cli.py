"""The ftstudio CLI, run in-process with click's runner (and once as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from click.testing import CliRunner

from app.cli import cli
from tests_paths import EXAMPLES, ROOT


def _config(tmp_path, tiny_model, **train):
    cfg = {
        "model": {"name": str(tiny_model)},
        "data": {"train": str(EXAMPLES / "alpaca.json"), "max_seq_len": 128},
        "method": {"kind": "lora", "r": 8, "alpha": 16},
        "train": {"max_steps": 6, "lr": 3e-3, "batch_size": 8, "eval_every": 3,
                  "save_every": 3, **train},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_runs_end_to_end_and_writes_outputs(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model)
    result = CliRunner().invoke(cli, ["train", str(path), "--set", "train.seed=7"])
    assert result.exit_code == 0, result.output
    assert "Done: 6 steps" in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["train"]["seed"] == 7
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if "loss" in json.loads(x)] == [1, 2, 3, 4, 5, 6]


def test_train_lists_every_config_problem(tmp_path, tiny_model):
    path = _config(tmp_path, tiny_model)
    result = CliRunner().invoke(cli, ["train", str(path), "--set", "train.lr=-1",
                                      "--set", "train.batch_size=0", "--set", "output_dir=null"])
    assert result.exit_code != 0
    for key in ("train.lr", "train.batch_size", "output_dir"):
        assert key in result.output


def test_data_check_human_and_json(tiny_model):
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "check", str(EXAMPLES / "chat.jsonl"),
                                 "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    assert "chat" in result.output
    result = runner.invoke(cli, ["data", "check", str(EXAMPLES / "alpaca.json"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "alpaca" and report["records"] == 240


def test_data_check_lists_bad_records_with_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\nnot json\n')
    result = CliRunner().invoke(cli, ["data", "check", str(bad)])
    assert "line 2" in result.output and "line 3" in result.output, result.output


def test_data_check_exits_1_for_bad_records_a_training_would_stop_at(tmp_path):
    """Regression: bad records exited 0 though data.on_bad_record: error (the default) stops a
    training at the first one. skip (the option, or a config's data settings) exits 0."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\nnot json\n')
    run = CliRunner().invoke
    result = run(cli, ["data", "check", str(bad)])
    assert result.exit_code == 1, result.output
    assert "Error: 2 bad records would stop a training with data.on_bad_record: error: " \
           "line 2, line 3; fix them, or leave them out with --on-bad-record skip" in result.output
    result = run(cli, ["data", "check", str(bad), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["skipped_bad"] == 2
    result = run(cli, ["data", "check", str(bad), "--on-bad-record", "skip"])
    assert result.exit_code == 0 and "line 2" in result.output and "line 3" in result.output
    skip = tmp_path / "skip.yaml"
    skip.write_text(yaml.safe_dump({"data": {"on_bad_record": "skip"}}))
    assert run(cli, ["data", "check", str(bad), "--config", str(skip)]).exit_code == 0
    assert run(cli, ["data", "check", str(bad), "--config", str(skip),
                     "--on-bad-record", "error"]).exit_code == 1
    assert run(cli, ["data", "check", str(EXAMPLES / "alpaca.json")]).exit_code == 0


def test_config_keys_check_and_defaults(tmp_path, tiny_model):
    runner = CliRunner()
    keys = runner.invoke(cli, ["config", "--keys"])
    assert keys.exit_code == 0 and "train.lr = 0.0002" in keys.output
    defaults = yaml.safe_load(runner.invoke(cli, ["config"]).output)
    assert defaults["method"]["kind"] == "lora"
    good = runner.invoke(cli, ["config", str(_config(tmp_path, tiny_model)), "--check"])
    assert good.exit_code == 0, good.output
    bad = runner.invoke(cli, ["config", "--set", "method.quant_bits=8", "--check"])
    assert bad.exit_code != 0 and "method.quant_bits" in bad.output


def test_console_script_runs_as_a_process(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "app.cli", "demo-model", str(out), "--size",
                           "tiny"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "demo model" in proc.stdout
    assert json.loads((out / "config.json").read_text())["ftstudio_demo"]
