"""The Train tab: base model, data, method and hyperparameters, with the estimate and Start.

Layout: the form on the left in four numbered steps, a sticky summary on the right (memory
estimate, job name, Start, every problem at once, YAML and the equivalent command).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from app.studio import form, handlers, render, sweep_tab
from app.studio.session import actor as actor_of

FIELD = "fs-field"
#: the preview's marks: trained tokens, and a preference pair's rejected answer
PREVIEW_COLORS = {"trained": "#16a34a", "rejected": "#dc2626"}


@dataclass
class TrainTab:
    widgets: dict[str, Any] = field(default_factory=dict)
    inputs: list[Any] = field(default_factory=list)  # widgets in FORM_KEYS order
    job_name: Any = None
    start: Any = None
    problems: Any = None
    started: Any = None        # gr.State: the id of the job just queued
    status: Any = None
    defaults: Any = None       # gr.State (handlers.new_defaults_state): the fields set by hand
    defaults_card: Any = None  # where the defaults came from
    sweep: Any = None          # the Sweep toggle next to Start
    sweep_inputs: list[Any] = field(default_factory=list)  # twins, in sweep_tab.SWEEP_KEYS order
    sweep_card: Any = None     # how many jobs, how long
    started_sweep: Any = None  # gr.State: the id of the sweep just queued
    on_load: list[tuple[Any, list, list]] = field(default_factory=list)  # (fn, inputs, outputs)


def _widget(key: str, value: Any = None, **kw: Any):
    spec = form.widget_spec(key)
    common = dict(label=spec["label"], info=spec["info"], elem_classes=[FIELD],
                  elem_id="f-" + key.replace(".", "-").replace("_", "-"))
    common.update(kw)
    value = spec["value"] if value is None else value
    if spec["type"] == "dropdown":
        return gr.Dropdown(choices=spec["choices"], value=value,
                           multiselect=spec.get("multiselect", False), **common)
    if spec["type"] == "checkbox":
        return gr.Checkbox(value=value, **common)
    if spec["type"] == "number":
        return gr.Number(value=value, precision=spec.get("precision"), **common)
    return gr.Textbox(value=value, placeholder=spec.get("placeholder"), max_lines=1, **common)


def _step(n: int, title: str, sub: str) -> None:
    gr.HTML(f'<div class="fs-step"><span class="fs-step-n">{n}</span><div><div '
            f'class="fs-step-t">{render.esc(title)}</div><div class="fs-muted">'
            f'{render.esc(sub)}</div></div></div>')


def build() -> TrainTab:
    t = TrainTab()
    cfg = handlers.default_config()
    start_values = dict(zip(form.FORM_KEYS, form.config_to_form(cfg)))
    _, start_defaults, start_card = handlers.apply_defaults(start_values,
                                                            handlers.new_defaults_state())
    w = t.widgets

    twins: dict[str, Any] = {}

    def add(key: str, **kw: Any):
        w[key] = _widget(key, start_values[key], **kw)
        if key in sweep_tab.SWEEP_KEYS:    # takes a list or a range while Sweep is on
            twins[key] = sweep_tab.twin(key)
        return w[key]

    with gr.Row(equal_height=False, elem_id="train-layout"):
        with gr.Column(scale=3, elem_id="train-form"):
            # 1 -- base model
            with gr.Column(elem_classes=["fs-section"]):
                _step(1, "Base model", "A curated preset, a folder under FTSTUDIO_HOME/models, "
                                       "the offline demo, or any hub id.")
                w["model.name"] = gr.Dropdown(
                    choices=handlers.model_choices(), value=start_values["model.name"],
                    allow_custom_value=True, filterable=True, label="Base model",
                    info="Type a hub id (owner/name) or a local path to use another model. "
                         f"Memory shown for presets: {handlers.NEEDS_ASSUME}.",
                    elem_classes=[FIELD], elem_id="f-model-name")
                model_card = gr.HTML(handlers.model_card(start_values["model.name"]))
                with gr.Accordion("Import a GGUF file", open=False, elem_id="gguf-box"):
                    gguf_upload = gr.UploadButton(
                        "⇪ Import a GGUF file", file_types=[".gguf"], size="sm",
                        elem_id="import-gguf")
                    gguf_status = gr.HTML(render.note(
                        "A .gguf model (llama.cpp, Ollama) becomes a base model here, "
                        "dequantized to float32: an approximation of the original weights. "
                        "Uploads are limited to FTSTUDIO_MAX_UPLOAD_MB; import bigger files "
                        "with `ftstudio models import FILE.gguf`. Admins only when logins "
                        "are on."), elem_id="import-gguf-status")
                imported = _wire_gguf_import(gguf_upload, w["model.name"], gguf_status)
                with gr.Accordion("Model loading options", open=False):
                    with gr.Row():
                        for key in form.MODEL_ADVANCED:
                            add(key)
            # 2 -- data
            with gr.Column(elem_classes=["fs-section"]):
                _step(2, "Data", "Upload .json, .jsonl, .csv or .parquet, or try a bundled "
                                 "example. The report and preview update at once.")
                with gr.Row(equal_height=True):
                    examples = handlers.example_choices()
                    example = gr.Dropdown(choices=examples, value=start_values["data.train"]
                                          if start_values["data.train"] in dict(examples).values()
                                          else None,
                                          label="Bundled example", scale=2,
                                          elem_id="example-picker")
                    upload = gr.UploadButton("⇪ Upload data file", scale=1, size="lg",
                                             file_types=[".json", ".jsonl", ".csv", ".parquet"],
                                             elem_id="upload-data")
                upload_note = gr.HTML(elem_id="upload-status", elem_classes=["fs-slot"])
                mapping = _column_mapping()
                add("data.train")
                report = gr.HTML(elem_id="data-report")
                with gr.Row(equal_height=False):
                    hist = gr.BarPlot(x="length", y="records", sort=None, height=250,
                                      y_lim=[0, None], x_label_angle=-45,
                                      title="Record length", x_title="length",
                                      y_title="records", scale=2, elem_id="length-hist")
                    with gr.Column(scale=3):
                        previews = [gr.HighlightedText(
                            label=f"Record {i + 1} as the model sees it", show_legend=i == 0,
                            color_map=PREVIEW_COLORS, combine_adjacent=True,
                            show_inline_category=False,
                            elem_classes=["fs-preview"]) for i in range(handlers.PREVIEW_RECORDS)]
                with gr.Row():
                    for key in form.DATA_MAIN:
                        add(key)
                with gr.Accordion("More data settings", open=False):
                    with gr.Row():
                        for key in form.DATA_ADVANCED[:5]:
                            add(key)
                    with gr.Row():
                        for key in form.DATA_ADVANCED[5:]:
                            add(key)
                    add("data.columns")
            # 3 -- method
            with gr.Column(elem_classes=["fs-section"]):
                _step(3, "Method", "How the model learns. Only the chosen method's settings "
                                   "show.")
                w["method.kind"] = gr.Radio(
                    choices=[(form.METHOD_LABELS[k], k) for k in form.METHOD_LABELS],
                    value=start_values["method.kind"], label="Method", show_label=False,
                    elem_classes=[FIELD, "fs-methods"], elem_id="f-method-kind")
                blurb = gr.HTML(render.note(form.METHOD_BLURBS[start_values["method.kind"]]))
                with gr.Row():
                    for key, kinds in form.METHOD_KEYS.items():
                        add(key, visible=start_values["method.kind"] in kinds)
            # 4 -- training
            with gr.Column(elem_classes=["fs-section"]):
                _step(4, "Training", "Sensible defaults; hover a setting's name for what it "
                                     "does.")
                t.defaults_card = gr.HTML(start_card, elem_id="defaults-card")
                with gr.Row():
                    for key in form.TRAIN_MAIN:
                        add(key)
                with gr.Accordion("Advanced training settings", open=False):
                    for i in range(0, len(form.TRAIN_ADVANCED), 5):
                        with gr.Row():
                            for key in form.TRAIN_ADVANCED[i:i + 5]:
                                add(key)
                with gr.Accordion("Trackers: TensorBoard, MLflow, W&B", open=False,
                                  elem_id="trackers-box"):
                    with gr.Row():
                        for key in form.TRAIN_TRACKERS:
                            add(key)
                with gr.Accordion("Objective: SFT, preference tuning (DPO, ORPO, SimPO, "
                                  "KTO), RL with rewards (GRPO) or distillation", open=False,
                                  elem_id="objective-box"):
                    with gr.Row():
                        add("train.objective")
                        for key, objectives in form.OBJECTIVE_KEYS.items():
                            add(key, visible=start_values["train.objective"] in objectives)
                    with gr.Row(equal_height=False, elem_classes=["fs-toolbar"]):
                        reward_upload = gr.UploadButton(
                            "⇪ Install a reward function (.py)", file_types=[".py"],
                            size="sm", scale=0, min_width=260, elem_id="install-reward")
                        reward_status = gr.HTML(render.note(
                            "GRPO's custom rewards: each public function of the file, with "
                            "TRL's signature f(prompts, completions, **columns), becomes "
                            "FILE.FUNCTION. Admins only when logins are on (it is code the "
                            "workers run); or `ftstudio rewards add FILE.py`."),
                            elem_id="install-reward-status")
                    reward_upload.upload(_install_reward, reward_upload, reward_status,
                                         api_visibility="private")
            # 5 -- parallelism: only where the workers have GPUs (handlers.worker_gpus)
            gpus = handlers.worker_gpus()
            with gr.Column(elem_classes=["fs-section"], visible=gpus is not None,
                           elem_id="parallel-box"):
                _step(5, "Parallelism", f"{gpus[0] if gpus else 0} GPU(s) of "
                      f"{gpus[1].name if gpus else '?'} per worker. One GPU is enough for most "
                      "runs; the estimate says when a model needs several with FSDP, or "
                      "offload.")
                with gr.Row():
                    for key in form.PARALLEL_KEYS:
                        add(key)
        # -- the summary column
        with gr.Column(scale=2, elem_id="train-side", elem_classes=["fs-sticky"]):
            estimate = gr.HTML(elem_id="estimate")
            t.job_name = gr.Textbox(label="Job name", placeholder="optional, e.g. demo-lora",
                                    max_lines=1, elem_id="job-name")
            with gr.Row(equal_height=True):
                t.start = gr.Button("▶ Start training", variant="primary", size="lg",
                                    scale=3, elem_id="start-btn")
                t.sweep = gr.Checkbox(label="Sweep", value=False, scale=1, min_width=90,
                                      info="number fields take lists or ranges",
                                      elem_id="sweep-toggle")
            t.sweep_card = gr.HTML(elem_id="sweep-card", elem_classes=["fs-slot"])
            t.problems = gr.HTML(elem_id="problems", elem_classes=["fs-slot"])
            t.status = gr.HTML(elem_id="start-status", elem_classes=["fs-slot"])
            with gr.Accordion("Settings as YAML · equivalent command", open=False,
                              elem_id="yaml-box"):
                with gr.Row():
                    save = gr.DownloadButton("⇩ Save YAML", size="sm", elem_id="save-yaml")
                    load = gr.UploadButton("⇪ Load YAML", size="sm",
                                           file_types=[".yaml", ".yml", ".json"],
                                           elem_id="load-yaml")
                yaml_box = gr.Code(language="yaml", label="config.yaml", interactive=False,
                                   max_lines=24)
                command = gr.Code(language="shell", label="ftstudio command",
                                  interactive=False, elem_id="command")
    t.inputs = [w[k] for k in form.FORM_KEYS]
    t.sweep_inputs = [twins[k] for k in sweep_tab.SWEEP_KEYS]
    t.started = gr.State(None)
    t.started_sweep = gr.State(None)
    t.defaults = gr.State(start_defaults)
    stored = _wire(t, model_card, example, upload, report, hist, previews, blurb, estimate,
                   save, load, yaml_box, command)
    mapped = _wire_upload(t, upload, upload_note, mapping)
    _wire_defaults(t, example, *mapped, imported)
    _wire_sweep(t)
    return t


def _wire_sweep(t: TrainTab) -> None:
    """The Sweep toggle swaps each number field for its twin (a list or a range); the card
    counts the jobs and their time. The method and objective keep choosing what shows."""
    n, quiet = len(form.FORM_KEYS), dict(show_progress="hidden", api_visibility="private")
    fields = [t.widgets[k] for k in sweep_tab.SWEEP_KEYS]

    def visibility(on, *args):
        return sweep_tab.toggled(bool(on), _values(args[:n]), list(args[n:]))

    io = ([t.sweep] + t.inputs + t.sweep_inputs, fields + t.sweep_inputs + [t.start])
    gr.on([t.sweep.change, t.widgets["method.kind"].change,
           t.widgets["train.objective"].change], visibility, *io, queue=False, **quiet)

    def card(on, request: gr.Request, *args):
        if not on:
            return ""
        texts = dict(zip(sweep_tab.SWEEP_KEYS, args[n:]))
        return sweep_tab.card(_values(args[:n]), texts, actor_of(request))

    gr.on([t.sweep.change] + [x.change for x in t.sweep_inputs], card,
          [t.sweep] + t.inputs + t.sweep_inputs, t.sweep_card, trigger_mode="always_last",
          **quiet)


def _install_reward(file, request: gr.Request | None = None):
    path = getattr(file, "name", file)
    return handlers.install_reward_upload(path, actor_of(request))


def _wire_gguf_import(upload, model_name, status):
    """The uploaded .gguf is imported (handlers.import_gguf_upload) and selected. Returns the
    event, to chain .then() on (a handler's value sets no .input event)."""

    def imported(file, request: gr.Request | None = None):
        name, message = handlers.import_gguf_upload(file, actor_of(request))
        if name is None:
            return gr.skip(), message
        return gr.update(choices=handlers.model_choices(), value=name), message

    return upload.upload(imported, upload, [model_name, status], api_visibility="private")


def _values(args) -> dict[str, Any]:
    return form.form_to_values(args[:len(form.FORM_KEYS)])


def _wire(t: TrainTab, model_card, example, upload, report, hist, previews, blurb, estimate,
          save, load, yaml_box, command):
    w, n = t.widgets, len(form.FORM_KEYS)

    def side(request: gr.Request, *args):
        values, name = _values(args), args[n]
        return (handlers.estimate_panel(values, actor_of(request)),
                handlers.command_preview(values, name), handlers.yaml_text(values),
                handlers.save_yaml(values, name))

    side_io = (t.inputs + [t.job_name], [estimate, command, yaml_box, save])
    gr.on([x.change for x in t.inputs] + [t.job_name.change], side, *side_io,
          show_progress="hidden", trigger_mode="always_last", queue=False,
          api_visibility="private")
    t.on_load.append((side, *side_io))

    def data(request: gr.Request, *args):
        values = _values(args)
        html, frame, recs = handlers.data_panel(values)
        # the legend names only what the records show: "rejected" only for preference pairs
        colors = PREVIEW_COLORS if any(label == "rejected" for rec in recs
                                       for _, label in rec) else {"trained": PREVIEW_COLORS[
                                           "trained"]}
        shown = [gr.update(value=recs[i], visible=True, color_map=colors) if i < len(recs)
                 else gr.update(value=None, visible=i == 0, color_map=colors)
                 for i in range(len(previews))]
        # the estimate again: its time per epoch counts the tokens of this report
        return [html, frame, handlers.estimate_panel(values, actor_of(request)), *shown]

    data_io = (t.inputs, [report, hist, estimate, *previews])
    gr.on([w[k].change for k in form.DATA_KEYS], data, *data_io, show_progress="minimal",
          trigger_mode="always_last", api_visibility="private")
    t.on_load.append((data, *data_io))
    w["model.name"].change(handlers.model_card, w["model.name"], model_card,
                           show_progress="hidden", api_visibility="private")
    example.change(lambda p: p or gr.skip(), example, w["data.train"], queue=False,
                   api_visibility="private")
    known = {path for _, path in handlers.example_choices()}
    w["data.train"].change(lambda p: p if p in known else None, w["data.train"], example,
                           queue=False, api_visibility="private")

    # the number fields' visibility follows the method and objective in _wire_sweep (with
    # Sweep on, their list twins show instead); these show and hide the others
    method_keys = {k: v for k, v in form.METHOD_KEYS.items() if k not in sweep_tab.SWEEP_KEYS}
    objective_keys = {k: v for k, v in form.OBJECTIVE_KEYS.items()
                      if k not in sweep_tab.SWEEP_KEYS}

    def method_changed(kind):
        return [render.note(form.METHOD_BLURBS.get(kind, ""))] + [
            gr.update(visible=kind in kinds) for kinds in method_keys.values()]

    w["method.kind"].change(method_changed, w["method.kind"],
                            [blurb] + [w[k] for k in method_keys], queue=False,
                            api_visibility="private")

    def objective_changed(objective):
        return [gr.update(visible=objective in objectives)
                for objectives in objective_keys.values()]

    w["train.objective"].change(objective_changed, w["train.objective"],
                                [w[k] for k in objective_keys], queue=False,
                                api_visibility="private")

    def loaded(file, state):
        values, problems = handlers.load_yaml(file)
        if problems:
            return [gr.skip()] * n + [render.problems(problems, form.label_for), gr.skip(),
                                      gr.skip()]
        state = handlers.mark_loaded(state, "yaml")   # the file's values are the user's
        return values + [render.note("Settings loaded.", "good"), state,
                         handlers.defaults_card(state, dict(zip(form.FORM_KEYS, values)))]

    load.upload(loaded, [load, t.defaults], t.inputs + [t.problems, t.defaults,
                                                        t.defaults_card],
                api_visibility="private")


def uploaded(file, request: gr.Request | None = None, columns: dict[str, str] | None = None):
    """A dataset upload: (the stored file for data.train, or None when refused; a note: empty,
    or why); kept as the uploader's (session.actor: a disabled or removed account is refused
    with gr.Error). `columns`: data.columns for a file whose columns need renaming."""
    actor = actor_of(request)
    try:
        return handlers.store_upload(file, actor=actor, columns=columns), ""
    except (OSError, ValueError) as exc:
        return None, render.note(str(exc), "bad")


#: the record shapes a column mapping offers: (label, the fields of its three pickers: the
#: second optional)
SHAPES = {"alpaca": ("instruction / input / output", ("instruction", "input", "output")),
          "completion": ("prompt / completion", ("prompt", None, "completion")),
          "chat": ("messages (a list of {role, content})", ("messages", None, None))}


@dataclass
class ColumnMapping:
    """Next to the upload: which of a refused file's columns is which field (data.columns)."""
    box: Any
    shape: Any
    pickers: list[Any]
    use: Any
    pending: Any        # gr.State: the uploaded file waiting for a mapping


def _column_mapping() -> ColumnMapping:
    with gr.Group(visible=False, elem_id="column-map") as box:
        shape = gr.Radio([(label, key) for key, (label, _) in SHAPES.items()], value="alpaca",
                         label="The file's records are", elem_id="column-shape")
        with gr.Row():
            pickers = [gr.Dropdown(choices=[], label=f"{name or 'input'} column",
                                   elem_id=f"column-{i}")
                       for i, name in enumerate(SHAPES["alpaca"][1])]
        use = gr.Button("Use these columns", size="sm", variant="primary",
                        elem_id="column-use")
    return ColumnMapping(box, shape, pickers, use, gr.State(None))


def picked_columns(shape: str, picks: list[Any]) -> dict[str, str]:
    """data.columns from the mapping's pickers: {field: column} of each picked column."""
    fields = SHAPES.get(shape, SHAPES["alpaca"])[1]
    return {f: str(c) for f, c in zip(fields, picks) if f and c}


def upload_outcome(file, columns: dict[str, str] | None, request: gr.Request | None):
    """What the Data section shows after an upload (or a mapping): [data.train, the note next
    to the upload, the file kept for a mapping, the mapping box, its three pickers,
    data.columns]. A refused file clears data.train (nothing is trained on an older file),
    says why next to the upload and, when no format fits the file's columns, offers the
    mapping with the file's columns to pick from."""
    from engine.data import DataError

    actor = actor_of(request)
    name = Path(str(file)).name if file else ""
    try:
        path = handlers.store_upload(file, actor=actor, columns=columns)
    except DataError as exc:
        found = getattr(exc, "columns", None)
        note = render.note(f"{name} was not used: {exc}", "bad")
        if found is None:
            return [None, note, None, gr.update(visible=False)] + [gr.skip()] * 4
        note += render.note(f"Its columns: {', '.join(found)}. Pick below which column holds "
                            "what, then press Use these columns.", "info")
        choices = [("", "")] + [(c, c) for c in found]
        return [None, note, file, gr.update(visible=True)] + [
            gr.update(choices=choices, value=_guess(found, i)) for i in range(3)] + [gr.skip()]
    except (OSError, ValueError) as exc:
        return [None, render.note(f"{name} was not used: {exc}", "bad"), None,
                gr.update(visible=False)] + [gr.skip()] * 4
    used = f" with columns {form.columns_text(columns)}" if columns else ""
    return [path, render.note(f"Using {name}{used}.", "good"), None,
            gr.update(visible=False)] + [gr.skip()] * 3 + [form.columns_text(columns)]


def _guess(columns: list[str], i: int) -> str:
    """A first pick for the alpaca pickers: the first column as the instruction, the last as
    the output, no input."""
    if i == 0 and columns:
        return columns[0]
    if i == 2 and len(columns) > 1:
        return columns[-1]
    return ""


def _wire_upload(t: TrainTab, upload, note, m: ColumnMapping) -> tuple[Any, Any]:
    """The upload and the column mapping next to it; returns their events (the defaults follow
    a new data file)."""
    quiet = dict(api_visibility="private")
    outputs = [t.widgets["data.train"], note, m.pending, m.box, *m.pickers,
               t.widgets["data.columns"]]

    def on_upload(file, request: gr.Request = None):
        return upload_outcome(file, None, request)

    def on_use(file, shape, a, b, c, request: gr.Request = None):
        columns = picked_columns(shape, [a, b, c])
        if not file or not columns:
            return [gr.skip(), render.note("Upload the file again and pick its columns.",
                                           "warn")] + [gr.skip()] * 6
        return upload_outcome(file, columns, request)

    def on_shape(shape):
        fields = SHAPES.get(shape, SHAPES["alpaca"])[1]
        return [gr.update(label=f"{f} column", visible=True) if f else
                gr.update(visible=False, value="") for f in fields]

    stored = upload.upload(on_upload, upload, outputs, **quiet)
    used = m.use.click(on_use, [m.pending, m.shape, *m.pickers], outputs, **quiet)
    m.shape.change(on_shape, m.shape, m.pickers, queue=False, **quiet)
    return stored, used


def _wire_defaults(t: TrainTab, example, *set_by_handlers) -> None:
    """Defaults that fit the model (engine.models.recipes): taken when the user picks a model, a
    method or a data file (also after `set_by_handlers`: a data upload, a GGUF import), never
    into a field the user has edited. Edits are seen through the fields' .input events, which
    fire only when a person changes the value (not when a handler sets it, as here or on Load
    YAML)."""
    w, n = t.widgets, len(form.FORM_KEYS)
    keys = list(handlers.DEFAULT_KEYS)
    fields = [w[k] for k in keys]

    def warm(*args):      # the slow part (the data report) first, so the state is read after
        handlers.suggestions(_values(args))

    def take(*args):
        changes, state, card = handlers.apply_defaults(_values(args), args[n])
        return [changes[k] if k in changes else gr.skip() for k in keys] + [state, card]

    io = (t.inputs + [t.defaults], fields + [t.defaults, t.defaults_card])
    quiet = dict(show_progress="hidden", api_visibility="private")
    picked = gr.on([w["model.name"].input, w["method.kind"].input, w["data.train"].input],
                   warm, t.inputs, None, trigger_mode="always_last", **quiet)
    picked.then(take, *io, **quiet)
    chose = example.input(lambda p: p or gr.skip(), example, w["data.train"], queue=False,
                          **quiet)
    chose.then(warm, t.inputs, None, **quiet).then(take, *io, **quiet)
    for event in set_by_handlers:
        event.then(warm, t.inputs, None, **quiet).then(take, *io, **quiet)

    def marker(key: str):
        def mark(state, *now):
            state = handlers.mark_edited(state, key)
            return state, handlers.defaults_card(state, dict(zip(keys, now)))
        return mark

    for key in keys:
        w[key].input(marker(key), [t.defaults] + fields, [t.defaults, t.defaults_card],
                     queue=False, **quiet)


def after_clone(t: TrainTab, cloned, job_picker) -> None:
    """A cloned job's settings count as the user's: the defaults leave them alone."""
    keys = list(handlers.DEFAULT_KEYS)

    def mark(jid, state, *now):
        if not jid:
            return gr.skip(), gr.skip()
        state = handlers.mark_loaded(state, "clone")
        return state, handlers.defaults_card(state, dict(zip(keys, now)))

    cloned.then(mark, [job_picker, t.defaults] + [t.widgets[k] for k in keys],
                [t.defaults, t.defaults_card], queue=False, show_progress="hidden",
                api_visibility="private")


def start_handler(*args, request: gr.Request | None = None):
    """Start: (problems HTML, status HTML, job id state, sweep id state, field highlight
    updates...). With Sweep on (the argument after the job name, then the twins' texts) it
    queues a sweep group (sweep_tab.start) instead of one job."""
    n = len(form.FORM_KEYS)
    values, name = _values(args), args[n]
    on = len(args) > n + 1 and bool(args[n + 1])
    try:
        if on:
            texts = dict(zip(sweep_tab.SWEEP_KEYS, args[n + 2:]))
            sweep_id, problems = sweep_tab.start(values, texts, name, actor=actor_of(request))
            job_id = None
        else:
            job_id, problems = handlers.start_job(values, name, actor=actor_of(request))
            sweep_id = None
    except Exception as exc:  # noqa: BLE001 - the queue being down is a message, not a crash
        return [render.note(f"Could not queue the {'sweep' if on else 'job'}: {exc}", "bad"),
                "", None, None] + [gr.update(elem_classes=[FIELD])] * n
    bad = {p.key for p in problems}
    marks = [gr.update(elem_classes=[FIELD, "fs-bad"] if k in bad else [FIELD])
             for k in form.FORM_KEYS]
    if problems:
        return [render.problems(problems, form.label_for), "", None, None] + marks
    if sweep_id is not None:
        return ["", render.note(f"Sweep {sweep_id} queued: follow it in the Sweeps tab.",
                                "good"), None, sweep_id] + marks
    return ["", job_note(job_id, "queued"), job_id, None] + marks


#: the Train tab's note about the job it started, by that job's state
JOB_NOTES = {"queued": ("Job {id} queued: follow it in the Jobs tab.", "good"),
             "running": ("Job {id} is running: follow it in the Jobs tab.", "good"),
             "completed": ("Job {id} completed: its results are in the Jobs tab.", "good"),
             "failed": ("Job {id} failed: the Jobs tab says why.", "bad"),
             "cancelled": ("Job {id} was cancelled.", "warn"),
             "interrupted": ("Job {id} was interrupted: resume it in the Jobs tab.", "warn")}


def job_note(job_id: Any, status: str) -> str:
    """The note about job `job_id` in `status`, marked with the job's id so the timer can tell
    it from other messages in the same place."""
    text, tone = JOB_NOTES.get(status, ("Job {id} is " + status + ".", "info"))
    return f'<div data-job="{render.esc(job_id)}">{render.note(text.format(id=job_id), tone)}</div>'


def started_note(job_id, current, request: gr.Request | None = None):
    """Refresh the note about the started job when that job's state changed (another
    message in its place is left alone)."""
    from app.studio import jobview

    if not job_id or f'data-job="{render.esc(job_id)}"' not in (current or ""):
        return gr.skip()
    try:
        status = jobview._api().get(str(job_id), actor=actor_of(request))["status"]
    except Exception:  # noqa: BLE001 - deleted, or the store is busy: leave the note
        return gr.skip()
    note = job_note(job_id, status)
    return gr.skip() if note == current else note
