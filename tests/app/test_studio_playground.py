"""The Playground handler: streams the tuned answer, then the base answer beside it."""

from __future__ import annotations

from app.studio import playground_tab


def test_respond_streams_tuned_then_base(monkeypatch, tiny_model):
    calls = []

    def fake_stream(base, adapter, messages, use_adapter=True, **kw):
        calls.append((use_adapter, messages, kw["temperature"]))
        word = "tuned" if use_adapter else "base"
        yield word[:2]
        yield word

    monkeypatch.setattr("engine.evaluation.generate.stream_chat", fake_stream)
    monkeypatch.setattr(playground_tab, "model_for_job", lambda jid, actor=None: (str(tiny_model), "x"))
    out = list(playground_tab.respond("hi", [], [], "job1", True, "Be brief.", 16, 0.0, 0.9,
                                      50, 1.0))
    _, tuned, base, note = out[-1]
    assert tuned[-1] == {"role": "assistant", "content": "tuned"}
    assert base[-1] == {"role": "assistant", "content": "base"} and note == ""
    assert [c[0] for c in calls] == [True, False]
    assert calls[0][1] == [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "hi"}]
    out = list(playground_tab.respond("again", tuned, base, "job1", False, "", 16, 0.7, 0.9,
                                      50, 1.0))
    _, tuned2, base2, _ = out[-1]
    assert len(tuned2) == 4 and base2 == base          # compare off: the base column rests
    assert calls[-1][1][-3:] == [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "tuned"},
                                 {"role": "user", "content": "again"}]


def test_respond_explains_a_job_without_adapter(home):
    out = list(playground_tab.respond("hi", [], [], None, True, "", 16, 0.7, 0.9, 50, 1.0))
    assert "Pick a finished job" in out[-1][3]
