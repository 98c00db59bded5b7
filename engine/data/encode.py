"""Encoding: one normalized example (engine.data.formats) into input_ids and labels, with the
loss mask the data pipeline's rules give (engine.data.pipeline docstring states them).

Use from Python:
    from engine.data import Encoder, IGNORE_INDEX
    enc = Encoder(tokenizer, "messages").encode(messages)    # Encoded(input_ids, labels)
    chosen, rejected = Encoder(tokenizer, "preference").encode_pair(example)
    enc = Encoder(tokenizer, "kto").encode(example)          # prompt + completion

Preference ("preference") and kto examples are conversations: each side (prompt + chosen,
prompt + rejected; prompt + completion) is rendered with the chat template exactly as a chat
example, and labels are on the answer only (its content and the end-of-turn token): never on
the prompt, not even on the assistant turns of a multi-turn prompt, and train_on_prompt does not
apply (the objectives compare the answers' log-probs). The two sides of a pair share the
prompt's tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.data.formats import RecordError
from engine.data.readers import DataError

#: the label of a position that carries no loss (prompt, template, padding); the one definition
IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    #: the text of each token (for previews), only when asked for
    pieces: list[str] | None = None


class Encoder:
    """Turns normalized examples into input_ids and labels (see the module docstring's rules)."""

    def __init__(self, tokenizer, kind: str, train_on_prompt: bool = False,
                 max_seq_len: int | None = None, path: str = ""):
        self.tokenizer = tokenizer
        self.kind = kind
        self.train_on_prompt = train_on_prompt
        self.max_seq_len = max_seq_len
        self.path = path
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.add_bos = bos is not None and bool(probe) and probe[0] == bos

    # -- one example
    def encode(self, example: Any, where: str = "", with_pieces: bool = False) -> Encoded:
        """Raises RecordError when the chat template rejects a conversation. A kto example
        gives its prompt + completion; a preference example has two sides (encode_pair)."""
        tok = self.tokenizer
        if self.kind == "preference":
            raise ValueError("a preference example has two sides: use Encoder.encode_pair")
        if self.kind == "kto":
            return self._conversation(example["prompt"], example["completion"], where,
                                      with_pieces)
        append_eos = None
        if self.kind == "messages":
            text, spans = self._render(example, where)
        elif self.kind == "completion":
            prompt, completion = example
            text, spans = prompt + completion, [(len(prompt), len(prompt) + len(completion))]
            append_eos = tok.eos_token_id
        else:
            text, spans = example, [(0, len(example))]
            append_eos = tok.eos_token_id
        return self._finish(text, spans, append_eos, self.train_on_prompt, with_pieces)

    def encode_pair(self, example: dict, where: str = "", with_pieces: bool = False
                    ) -> tuple[Encoded, Encoded]:
        """(chosen, rejected) of a preference example: prompt + each answer, labels on the
        answer only. Raises RecordError when the chat template rejects a conversation."""
        return (self._conversation(example["prompt"], example["chosen"], where, with_pieces),
                self._conversation(example["prompt"], example["rejected"], where, with_pieces))

    def _conversation(self, prompt: list[dict], answer: list[dict], where: str,
                      with_pieces: bool) -> Encoded:
        text, spans = self._render(prompt + answer, where, first=len(prompt))
        return self._finish(text, spans, None, False, with_pieces)

    def _finish(self, text: str, spans: list[tuple[int, int]], append_eos: int | None,
                train_all: bool, with_pieces: bool) -> Encoded:
        """Tokens and labels of `text`, trained in `spans` (everywhere with train_all)."""
        tok = self.tokenizer
        if append_eos is not None and tok.eos_token and text.endswith(tok.eos_token):
            append_eos = None
        ids, offsets = self._tokenize(text, spans)
        labels = [tid if train_all or any(s < b and e > a for a, b in spans)
                  else IGNORE_INDEX for tid, (s, e) in zip(ids, offsets)]
        pieces = _pieces(text, offsets) if with_pieces else None
        if self.add_bos and not (tok.bos_token and text.startswith(tok.bos_token)):
            ids, labels = [tok.bos_token_id] + ids, [IGNORE_INDEX] + labels
            if pieces is not None:
                pieces = [tok.bos_token] + pieces
        if append_eos is not None:
            ids, labels = ids + [append_eos], labels + [append_eos]
            if pieces is not None:
                pieces.append(tok.eos_token)
        if labels:
            labels[0] = IGNORE_INDEX  # never predict a record's first token (packing relies on it)
        return Encoded(ids, labels, pieces)

    def _render(self, messages: list[dict], where: str, first: int = 0
                ) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character span of each assistant turn (from message
        `first` on: the turns before it are prompt)."""
        full = self._apply(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or i < first:
                continue
            prefix = self._apply(messages[:i], True)
            through = self._apply(messages[:i + 1], False)
            if not (through.startswith(prefix) and full.startswith(through)):
                raise DataError(
                    f"{self.path} {where}: the chat template renders the first {i + 1} messages "
                    "differently from the start of the whole conversation (or its generation "
                    "prompt is not a prefix of the assistant turn), so assistant turns cannot "
                    "be located for the loss mask; use a tokenizer whose template renders "
                    "earlier turns unchanged, or convert the data to the completion format")
            end = len(through.rstrip())
            spans.append((len(prefix), max(end, len(prefix))))
        return full, spans

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja raises TemplateError; templates may raise anything
            raise RecordError(None, f"the chat template rejected this conversation ({exc})",
                              "check the roles and their order for this model") from None

    def _tokenize(self, text: str, spans: list[tuple[int, int]]
                  ) -> tuple[list[int], list[tuple[int, int]]]:
        tok = self.tokenizer
        if tok.is_fast:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        # slow tokenizers have no offsets: tokenize each prompt/response segment on its own
        cuts = sorted({0, len(text), *(c for span in spans for c in span)})
        ids, offsets = [], []
        for a, b in zip(cuts, cuts[1:]):
            seg = tok(text[a:b], add_special_tokens=False)["input_ids"]
            ids += seg
            offsets += [(a, b)] * len(seg)
        return ids, offsets

    # -- a batch, for datasets.map
    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Per record: input_ids and labels cut to max_seq_len, and what the report counts:
        length (the longest side, cut), full_length (the longest side, uncut), tokens (every
        side, cut), trained (tokens carrying loss, every side, cut), untrained (1 when a side
        has no trained token left), answer_cut (1 when truncation cut trained tokens of a side),
        error. Preference adds rejected_input_ids, rejected_labels, chosen_full_length and
        rejected_full_length; kto adds desirable."""
        keys = ["input_ids", "labels", "length", "full_length", "tokens", "trained", "untrained",
                "answer_cut", "error"]
        if self.kind == "preference":
            keys += ["rejected_input_ids", "rejected_labels", "chosen_full_length",
                     "rejected_full_length"]
        elif self.kind == "kto":
            keys.append("desirable")
        out: dict[str, list] = {k: [] for k in keys}
        for where, raw in zip(batch["where"], batch["example"]):
            example = json.loads(raw)
            try:
                sides = (list(self.encode_pair(example, where)) if self.kind == "preference"
                         else [self.encode(example, where)])
                error = None
            except RecordError as exc:
                sides, error = [Encoded([], [])] * (2 if self.kind == "preference" else 1), \
                    str(exc)
            cut = [self._cut(enc) for enc in sides]
            out["input_ids"].append(cut[0][0])
            out["labels"].append(cut[0][1])
            out["length"].append(max(len(ids) for ids, _ in cut))
            out["full_length"].append(max(len(enc.input_ids) for enc in sides))
            out["tokens"].append(sum(len(ids) for ids, _ in cut))
            trained = [_trained(labels) for _, labels in cut]
            out["trained"].append(sum(trained))
            out["untrained"].append(int(any(n == 0 for n in trained)))
            out["answer_cut"].append(int(any(n < _trained(enc.labels)
                                             for n, enc in zip(trained, sides))))
            out["error"].append(error)
            if self.kind == "preference":
                out["rejected_input_ids"].append(cut[1][0])
                out["rejected_labels"].append(cut[1][1])
                out["chosen_full_length"].append(len(sides[0].input_ids))
                out["rejected_full_length"].append(len(sides[1].input_ids))
            elif self.kind == "kto":
                out["desirable"].append(bool(example["desirable"]))
        return out

    def _cut(self, enc: Encoded) -> tuple[list[int], list[int]]:
        """input_ids and labels truncated to max_seq_len, keeping the start."""
        if self.max_seq_len is not None and len(enc.input_ids) > self.max_seq_len:
            return enc.input_ids[:self.max_seq_len], enc.labels[:self.max_seq_len]
        return enc.input_ids, enc.labels


def _trained(labels: list[int]) -> int:
    return sum(x != IGNORE_INDEX for x in labels)


def _pieces(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """Each token's text, so that the pieces join back into `text` exactly."""
    pieces, done = [], 0
    for s, e in offsets:
        start = max(s, done)
        pieces.append(text[start:e] if e > start else "")
        done = max(done, e)
    return pieces
