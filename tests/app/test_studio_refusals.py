"""A team server under abuse, through gradio_client on a real in-process server (no worker, so
whatever is queued stays visible): config bombs answered at once with a short message while
the server keeps answering others, every out-of-range value refused naming its key, a job
larger than any worker refused, and nothing of any of it reaching the queue."""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest

from tests_paths import EXAMPLES


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """One server for the module (starting one takes seconds), in its own FTSTUDIO_HOME."""
    from gradio_client import Client

    from app.studio import build_app, launch_kwargs

    home = tmp_path_factory.mktemp("refusals") / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTSTUDIO_HOME", str(home))
        app = build_app(worker="external")
        app.queue(default_concurrency_limit=8).launch(
            prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True,
            **launch_kwargs())
        try:
            yield app.local_url, Client(app.local_url, verbose=False)
        finally:
            app.close()


@pytest.fixture(autouse=True)
def nothing_queued(server):
    """Whatever a test sends, no job is recorded and no task is queued."""
    from jobs import api, tasks

    before = ({j["id"] for j in api.list_jobs()}, tasks.queued_job_ids())
    yield
    assert ({j["id"] for j in api.list_jobs()}, tasks.queued_job_ids()) == before


def good(model) -> str:
    return (f"model:\n  name: {model}\ndata:\n  train: {EXAMPLES / 'alpaca.json'}\n"
            "  max_seq_len: 128\ntrain:\n  max_steps: 3\n")


def laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "train:\n  " + "\n  ".join(lines) + "\n"


def timed(fn, *args, **kw) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - start, out


BOMBS = {
    "aliases": (laughs(), "train.a", "holds more than 10,000 values"),
    "deep list": ("train:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n", "train.lr",
                  "nested more than 16 levels deep"),
    "section twice": ("train:\n  lr: 0.1\nmodel:\n  name: x\ntrain:\n  epochs: 2\n", "train",
                      "appears twice in the submitted config (lines 1 and 5)"),
    "key twice": ("train:\n  lr: 0.1\n  lr: 0.2\n", "train.lr", "(lines 2 and 3)"),
    "huge text": ("train: " + "x" * 300_000, "config", "at most 262,144"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_config_bombs_are_refused_at_once_and_the_server_keeps_answering(server, tiny_model,
                                                                          name):
    from gradio_client import Client

    url, client = server
    text, key, words = BOMBS[name]
    # the cost of a plain call on this machine now, the yardstick for the bomb's
    plain = statistics.median(timed(client.predict, good(tiny_model),
                                    api_name="/validate_config")[0] for _ in range(3))
    answers: dict[str, object] = {}

    def bomb(endpoint: str) -> None:
        args = (text,) if endpoint == "/validate_config" else (text, "bomb", 0)
        answers[endpoint] = timed(Client(url, verbose=False).predict, *args,
                                  api_name=endpoint)

    threads = [threading.Thread(target=bomb, args=(e,)) for e in ("/validate_config",
                                                                  "/submit_job")]
    for t in threads:
        t.start()
    others = [timed(client.predict, "", api_name="/list_jobs") for _ in range(3)]
    for t in threads:
        t.join(60)
    assert all(out == [] for _, out in others)          # answered meanwhile
    for endpoint, (seconds, out) in answers.items():
        problems = out if endpoint == "/validate_config" else out["problems"]
        if endpoint == "/submit_job":
            assert out["job_id"] is None
        assert len(problems) == 1 and problems[0]["key"].startswith(key), problems
        assert words in problems[0]["message"]
        assert len(json.dumps(out)) < 600                 # nothing of the value echoed
        # a bomb that expanded would take seconds and gigabytes; refused, it costs a plain call
        assert seconds < 1.0 + 5 * plain, (endpoint, seconds, plain)


OUT_OF_RANGE = {"train.max_steps": 10 ** 30, "train.epochs": 1e300, "method.r": 10 ** 9,
                "method.alpha": float("inf"), "train.batch_size": 10 ** 7,
                "data.max_seq_len": 10 ** 8, "train.lr": float("nan"), "train.seed": -1,
                "train.save_every": 10 ** 20, "model.name": "owner/not a repo"}


@pytest.mark.parametrize("key", list(OUT_OF_RANGE))
def test_each_out_of_range_value_is_refused_naming_its_key(server, tiny_model, key):
    import yaml

    _, client = server
    config = yaml.safe_load(good(tiny_model))
    section, _, name = key.partition(".")
    config.setdefault(section, {})[name] = OUT_OF_RANGE[key]
    text = yaml.safe_dump(config)
    problems = client.predict(text, api_name="/validate_config")
    assert [p["key"] for p in problems] == [key], problems
    job = client.predict(text, "absurd", 0, api_name="/submit_job")
    assert job["job_id"] is None and [p["key"] for p in job["problems"]] == [key]
    message = problems[0]["message"]
    assert "out of range: use" in message or "must be a positive number" in message or \
        "is not a valid hub id" in message or "exceeds the model" in message, message


def huge_model(folder) -> str:
    """A model folder whose config.json describes a 70B-parameter Llama (weights: an empty
    safetensors file: validation needs one, the estimate reads only config.json)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192}))
    (folder / "model.safetensors").write_bytes(b"")
    return str(folder)


def test_a_job_larger_than_any_worker_is_refused_before_the_queue(server, tmp_path, tiny_model,
                                                                   monkeypatch):
    _, client = server
    text = good(huge_model(tmp_path / "big"))               # LoRA over 70B: the weights
    job = client.predict(text, "too-big", 0, api_name="/submit_job")
    assert job["job_id"] is None
    [problem] = job["problems"]
    assert problem["key"] == "model.name", problem
    assert "the job needs about" in problem["message"] and "(weights" in problem["message"]
    full = client.predict(text.replace("train:\n", "method:\n  kind: full\ntrain:\n"), "full",
                          0, api_name="/submit_job")                 # the optimizer's state
    assert [p["key"] for p in full["problems"]] == ["method.kind"]
    assert "FTSTUDIO_WORKER_GPUS" in problem["message"]
    monkeypatch.setenv("FTSTUDIO_WORKER_GPUS", "1x0.0001")   # one GPU of 100 KB
    small = client.predict(good(tiny_model), "small", 0, api_name="/submit_job")
    assert small["job_id"] is None
    assert "FTSTUDIO_WORKER_GPUS=1x0.0001" in small["problems"][0]["message"]
    from jobs import api

    assert not [j for j in api.list_jobs() if j["name"] in ("too-big", "small")]
    import yaml

    from engine.config import from_dict

    cfg = from_dict(yaml.safe_load(good(tiny_model)))
    assert api.check_fits(cfg)
    monkeypatch.setenv("FTSTUDIO_WORKER_GPUS", "off")          # the check off
    assert api.check_fits(cfg) == []


@pytest.mark.slow   # the first report starts jobs.apart's child process (seconds)
def test_data_report_says_why_no_record_is_used(server, tiny_model, tmp_path):
    """Every record's prompt fills data.max_seq_len: 0 used, 0 truncated, 0 errors, and the
    report says why, as `ftstudio data check` does."""
    from gradio_client import handle_file

    _, client = server
    path = tmp_path / "long-prompts.jsonl"
    words = " ".join(["word"] * 900)
    path.write_text("".join(json.dumps({"instruction": f"{words} {i}", "output": "ok"}) + "\n"
                            for i in range(4)))
    out = client.predict(handle_file(str(path)), str(tiny_model), api_name="/data_report")
    report = out["report"]
    assert report["used"] == 0 and report["skipped_bad"] == 0
    assert report["no_trained_tokens"] == 4
    assert "lost every trained token to truncation at data.max_seq_len 512" in \
        report["why_none_used"]
    assert "/datasets/" in out["location"] and out["location"].endswith("long-prompts.jsonl")


def test_reads_never_wait_in_line_and_writes_share_small_pools():
    """Gradio runs an event one call at a time unless told otherwise: the read endpoints (and
    the job page's timers) have no limit, the checks and the writes a small pool each."""
    from app.studio import api, build_app

    app = build_app(worker="external")
    by_name = {fn.api_name: fn for fn in app.fns.values() if fn.api_name}
    for name in api.READS:
        assert by_name[name].concurrency_limit is None, name
    for name, (pool, limit) in api.POOLS.items():
        assert (by_name[name].concurrency_id, by_name[name].concurrency_limit) == (pool, limit)
    assert set(api.READS) | set(api.POOLS) == set(api.ENDPOINTS)
    assert by_name["data_report"].concurrency_limit == 2
    ticks = [fn for fn in app.fns.values()
             if any(event == "tick" and type(app.blocks.get(block)).__name__ == "Timer"
                    for block, event in fn.targets)]
    job_page = [fn for fn in ticks if fn.name in ("tick", "table_tick")]
    assert len(job_page) == 2 and all(fn.concurrency_limit is None for fn in job_page)
