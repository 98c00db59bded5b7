"""The runtimes an export is checked in: each format loaded the way a user would load it, behind
one small interface (Runtime) that engine/export/verify.py compares with the tuned model.

    adapter     peft PeftModel.from_pretrained on a freshly loaded base (full fine-tuning:
                transformers from_pretrained on the exported model folder)
    merged      transformers AutoModelForCausalLM.from_pretrained on the exported folder
    bnb4, bnb8  the same, quantized by bitsandbytes from the folder's quantization_config
    gguf-*      transformers' GGUF loader (from_pretrained(folder, gguf_file=...), which reads
                the file with the `gguf` package: tensors, hyperparameters and tokenizer), and
                llama.cpp itself when llama-cpp-python is installed (`ftstudio[llamacpp]`)

Models load in float32 (a bf16 file upcasts exactly), on the device engine.training.precision picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.evaluation.evaluate import Answer, EvalExample, generate_answers, prompt_ids
from engine.export.run import ExportError, Run


@dataclass
class Runtime:
    name: str                                        # shown in the record, e.g. "llama.cpp"
    encode: Callable[[str], list[int]]               # text -> ids, no special tokens added
    prompt: Callable[[str], list[int]]               # a rendered prompt -> ids (BOS as it adds)
    logits: Callable[[list[int]], np.ndarray]        # ids -> next-token logits, (T, vocab)
    answers: Callable[[list[str], int], list[Answer]]  # greedy answers to rendered prompts
    piece: Callable[[int], str]                      # a token id as its vocabulary string
    render: Callable[[list[dict], bool], str] | None = None  # the export's chat template
    template_source: str = ""                        # where that template was read from
    tied: bool | None = None                         # lm_head shares the embeddings' weights
    untied_differs: bool = False                     # untied, and lm_head != the embeddings
    model: Any = field(default=None, repr=False)


def hf_runtime(name: str, model, tokenizer, template_source: str) -> Runtime:
    """A transformers model and tokenizer as a Runtime."""
    import torch

    device = next(model.parameters()).device

    def logits(ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.tensor([ids], device=device)).logits[0]
        return out.float().cpu().numpy()

    def answers(texts: list[str], max_new_tokens: int) -> list[Answer]:
        return generate_answers(model, tokenizer, [_as_example(t) for t in texts],
                                max_new_tokens=max_new_tokens)

    def render(messages: list[dict], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token   # batched generation pads; ids unchanged
    tied, differs = _tying(model)
    return Runtime(name, encode=lambda text: list(tokenizer(text, add_special_tokens=False)
                                                  ["input_ids"]),
                   prompt=lambda text: prompt_ids(tokenizer, _as_example(text)),
                   logits=logits, answers=answers,
                   piece=lambda i: str(tokenizer.convert_ids_to_tokens(int(i))),
                   render=render if getattr(tokenizer, "chat_template", None) else None,
                   template_source=template_source, tied=tied, untied_differs=differs,
                   model=model)


def _as_example(text: str) -> EvalExample:
    return EvalExample("", text, "", "completion")


def _tying(model) -> tuple[bool | None, bool]:
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or emb is None or not hasattr(out, "weight"):
        return None, False
    if out.weight is emb.weight:
        return True, False
    try:
        same = out.weight.shape == emb.weight.shape and bool(
            (out.weight.float() == emb.weight.float()).all())
    except Exception:  # noqa: BLE001 - quantized weights: compared by the logits instead
        return False, False
    return False, not same


# --------------------------------------------------------------------------- the loaders


def load_runtimes(run: Run, fmt: str, out: Path, log):
    """The export in out, loaded in each runtime its format is checked in, one at a time."""
    if fmt == "adapter":
        yield _adapter(run, out)
    elif fmt == "merged":
        yield _folder(out, "transformers")
    elif fmt in ("bnb4", "bnb8"):
        yield _folder(out, "transformers + bitsandbytes", quantized=True)
    elif fmt.startswith("gguf-"):
        path = next(out.glob("*.gguf"), None)
        if path is None:
            raise ExportError(f"{out} holds no .gguf file to verify")
        yield _gguf_transformers(path)
        if llama_cpp_available():
            yield _gguf_llama_cpp(path)
        else:
            log("verify: llama-cpp-python is not installed (pip install 'ftstudio[llamacpp]'); "
                "checked with transformers' GGUF loader only")
    else:
        raise ExportError(f"no runtime to verify format {fmt!r} in")


def _float32_options() -> dict[str, Any]:
    import torch

    return {"dtype": torch.float32, "use_safetensors": True}


def _device():
    from engine.training.precision import this_device

    return this_device()[0]


def _adapter(run: Run, out: Path) -> Runtime:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = out / "adapter"
    if run.method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder, **_float32_options())
        return hf_runtime("transformers", model.to(_device()).eval(),
                          AutoTokenizer.from_pretrained(folder), "adapter/tokenizer_config.json")
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(run.base, **_float32_options(),
                                                **run.model_options)
    model = PeftModel.from_pretrained(base, folder).to(_device()).eval()
    own = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(folder if own else run.base)
    return hf_runtime("peft", model, tokenizer,
                      "adapter/tokenizer_config.json" if own else f"the base ({run.base})")


def _folder(out: Path, name: str, quantized: bool = False) -> Runtime:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantized:   # as a user loads it: quantization_config from config.json
        model = AutoModelForCausalLM.from_pretrained(out, device_map={"": str(_device())},
                                                     use_safetensors=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(out, **_float32_options()).to(_device())
    return hf_runtime(name, model.eval(), AutoTokenizer.from_pretrained(out),
                      "tokenizer_config.json")


def _gguf_transformers(path: Path) -> Runtime:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).to(_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.chat_template = gguf_chat_template(path)   # what llama.cpp reads
    return hf_runtime("transformers (GGUF loader)", model, tokenizer,
                      f"{path.name} (tokenizer.chat_template)")


def gguf_chat_template(path: Path) -> str | None:
    import gguf

    field = gguf.GGUFReader(path).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _gguf_llama_cpp(path: Path) -> Runtime:
    """llama.cpp through llama-cpp-python: its own tokenizer, graph and kernels."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, logits_all=True, verbose=False,
                          n_gpu_layers=-1)

    def encode(text: str) -> list[int]:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def logits(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)], dtype=np.float32)

    def answers(texts: list[str], max_new_tokens: int) -> list[Answer]:
        stop_ids = {llm.token_eos()}
        for stop in _modelfile_stops(path):   # Ollama's stops, where each is one token
            ids = encode(stop)
            if len(ids) == 1:
                stop_ids.add(ids[0])
        found = []
        for text in texts:
            llm.reset()
            llm.eval(list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)))
            new: list[int] = []
            stopped = False
            for _ in range(max_new_tokens):
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if token in stop_ids:
                    stopped = True
                    break
                new.append(token)
                llm.eval([token])
            text_out = llm.detokenize(new).decode("utf-8", errors="replace").strip()
            found.append(Answer(text_out, stopped, len(new) + stopped))
        return found

    return Runtime("llama.cpp", encode=encode,
                   prompt=lambda text: list(llm.tokenize(text.encode("utf-8"), add_bos=True,
                                                         special=True)),
                   logits=logits, answers=answers,
                   piece=lambda i: llm.detokenize([int(i)]).decode("utf-8", errors="replace"),
                   model=llm)


def _modelfile_stops(path: Path) -> list[str]:
    from engine.export.verify_files import modelfile_stops

    modelfile = path.with_name("Modelfile")
    return modelfile_stops(modelfile.read_text(encoding="utf-8")) if modelfile.is_file() else []
