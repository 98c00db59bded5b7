"""Knowledge distillation (train.objective distill): the student learns the teacher's next-token
distributions at the answer tokens, mixed with the usual next-token loss.

Use from Python:
    from engine.training.distill import forward_kl, generalized_jsd, DistillLoss, load_teacher
    per_token = forward_kl(student_logits, teacher_logits, temperature=2.0)        # [N]
    per_token = generalized_jsd(student_logits, teacher_logits, beta=0.5)          # [N]
    teacher = load_teacher(cfg, student_tokenizer, device, attention, log=print)
    loss_of = DistillLoss(model, teacher, cfg.train, autocast=acc.autocast, log=print)
    loss_sum = loss_of(model, batch)       # summed over the batch's trained tokens, as TokenLoss

The per-token losses (logits [N, V] -> [N]; p: the teacher's, q: the student's distribution of
the logits divided by the temperature T):

  forward_kl       T² · Σ_v p_v (log p_v − log q_v)      KL(teacher ‖ student), Hinton et al.'s
                   soft-target loss (T² keeps its gradient's scale as T changes)
  generalized_jsd  β · KL(p ‖ m) + (1 − β) · KL(q ‖ m),  m = β·p + (1 − β)·q; β = 0 is
                   KL(p ‖ q) and β = 1 is KL(q ‖ p), taken directly (GKD, Agarwal et al. 2024).
                   Its mean over the trained tokens equals TRL 1.16's
                   GKDTrainer.generalized_jsd_loss (tests/engine/test_distill.py, within 1e-5);
                   like TRL's, it is not multiplied by T².

A step's loss is Σ over trained tokens of α · divergence + (1 − α) · cross-entropy on the
reference token (α = train.distill_alpha), divided by the step's trained tokens as the SFT loss
is. Both models run on the same batch (packed rows included); only the positions that predict a
trained token go through the lm_heads, CHUNK_LOGITS logits of each model at a time, each chunk
beyond the first recomputed in backward (as engine/training/loss.py does), so neither model's
full-vocabulary logits exist for a whole batch.

train.teacher_topk_cache k: before training, the teacher answers every train and eval record
once (alone, unpacked), and its k most likely tokens at every trained position are kept with
their log-probs at the temperature, plus one bucket for the rest of the vocabulary (its mass,
1 − Σ top-k). The teacher is then freed. The student's distribution is read on the same k + 1
buckets (its log-probs of those k tokens, and the log of the rest of its mass), and the same
divergences are taken over the buckets: with k = the vocabulary they are the full ones exactly.
The cache lives beside the tokenized data under $FTSTUDIO_HOME/cache/teacher-<key>.safetensors,
keyed by the teacher's files, the tokens, k, the temperature and the precision; a resumed or
repeated run reads it instead of loading the teacher. Positions the cache cannot know (in a
packed row, a record's last token predicting the next record's first one) train on the
cross-entropy alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from engine.data import IGNORE_INDEX
from engine.training.loss import trained_tokens_of

#: bump when the cached values change for the same inputs
CACHE_VERSION = 1
ROWS = 16            # records the teacher answers per forward pass while caching
#: log-probabilities below this count as zero mass (a bucket the teacher gives nothing)
FLOOR = -1e4


# --------------------------------------------------------------------------- the divergences


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """Σ_v p (log p − log q) over the last axis, from log-probs (zero mass contributes 0)."""
    return F.kl_div(q_logp, p_logp, reduction="none", log_target=True).sum(-1)


def fkl_from_logps(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per row, from log-probs over the same support."""
    return _kl(teacher, student)


def gjsd_from_logps(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """The generalized JSD per row, from log-probs over the same support (as TRL takes it)."""
    if beta == 0:
        return _kl(teacher, student)
    if beta == 1:
        return _kl(student, teacher)
    b = torch.tensor(beta, dtype=student.dtype, device=student.device)
    mixture = torch.logsumexp(torch.stack([student + torch.log1p(-b), teacher + torch.log(b)]),
                              dim=0)
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """[N] T² · KL(softmax(teacher/T) ‖ softmax(student/T)) per row of [N, V] logits."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * fkl_from_logps(s, t)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """[N] GKD's generalized Jensen-Shannon divergence per row of [N, V] logits."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return gjsd_from_logps(s, t, beta)


def student_buckets(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float
                    ) -> torch.Tensor:
    """[N, k + 1] the student's log-probs (at the temperature) of the teacher's top-k tokens
    `ids` [N, k] and, last, of the rest of the vocabulary."""
    full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    top = full.gather(-1, ids)
    rest = torch.logsumexp(full.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, rest], dim=-1).clamp(min=FLOOR)


def teacher_buckets(teacher_logits: torch.Tensor, k: int, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, k] of the teacher's k most likely tokens, their log-probs at the temperature
    and the rest's [N, k + 1])."""
    full = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    top, ids = full.topk(min(k, full.shape[-1]), dim=-1)
    rest = torch.logsumexp(full.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return ids, torch.cat([top, rest], dim=-1).clamp(min=FLOOR)


def divergence(t, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """train.distill_loss per row, from log-probs over one support (full or buckets)."""
    if t.distill_loss == "gkd":
        return gjsd_from_logps(student, teacher, t.gkd_beta)
    return t.distill_temperature ** 2 * fkl_from_logps(student, teacher)


# --------------------------------------------------------------------------- the teacher


def load_teacher(cfg, tokenizer, device, attention: str, log: Callable[[str], None] = print):
    """The frozen teacher (train.teacher) on `device` in the student's weight dtype, with the
    student's attention implementation (it sees the same batches). Its tokenizer must be the
    student's: a ConfigError naming both otherwise."""
    from transformers import AutoModelForCausalLM

    from engine.config import ConfigError, Problem
    from engine.models.load import load_tokenizer, pick_dtype

    name = cfg.train.teacher
    theirs = load_tokenizer(name, trust_remote_code=cfg.model.trust_remote_code)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError([Problem("train.teacher", f"the teacher {name} and the student "
                                   f"{cfg.model.name} have different tokenizers ({len(theirs)} "
                                   f"vs {len(tokenizer)} tokens); distillation compares "
                                   "distributions token by token, so pick a teacher of the "
                                   "student's family")])
    dtype = pick_dtype(cfg.model.dtype, "full" if cfg.method.kind == "full" else "lora", device)
    teacher = AutoModelForCausalLM.from_pretrained(
        name, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True,
        attn_implementation=attention)
    teacher.config.use_cache = False
    teacher.to(device).eval().requires_grad_(False)
    n = sum(p.numel() for p in teacher.parameters())
    log(f"teacher: {name} ({n:,} parameters, {str(dtype).removeprefix('torch.')}, frozen)")
    return teacher


# --------------------------------------------------------------------------- the loss


class DistillLoss:
    """train.objective distill's loss of one batch for engine.training.loop: summed over the
    batch's trained tokens (units, as TokenLoss), α · divergence + (1 − α) · cross-entropy.
    The teacher is a frozen model on the same device, or None when the batches carry its cached
    top-k (teacher_ids, teacher_logps, teacher_has: engine.training.distill.TopK)."""

    def __init__(self, model, teacher, t, *, autocast=None, log: Callable[[str], None] = print,
                 chunk_tokens: int | None = None):
        from engine.training.loss import TokenLoss

        self.t, self.teacher = t, teacher
        self.autocast = autocast or contextlib.nullcontext
        self.student = TokenLoss(model, autocast=self.autocast, log=lambda line: None,
                                 chunk_tokens=chunk_tokens)
        self.coach = TokenLoss(teacher, autocast=self.autocast, log=lambda line: None,
                               chunk_tokens=chunk_tokens) if teacher is not None else None
        self.sums = {"distill": 0.0, "ce": 0.0}
        self.count = 0
        what = (f"gkd (generalized JSD, beta {t.gkd_beta:g})" if t.distill_loss == "gkd" else
                "forward KL")
        source = (f"the teacher's cached top-{t.teacher_topk_cache} log-probs"
                  if teacher is None else "the teacher's full distributions")
        log(f"loss: distill, {what} at temperature {t.distill_temperature:g} against {source}, "
            f"weight {t.distill_alpha:g} (cross-entropy {1 - t.distill_alpha:g}); "
            f"{'chunked through the lm_heads' if self.student.chunked else 'full logits'}")

    units = staticmethod(trained_tokens_of)   # what a step's loss is divided by

    def _hidden(self, chunker, model, batch) -> tuple[torch.Tensor, Callable]:
        """(the model's final hidden states, or its logits, [B, L, H], the head to apply)."""
        from engine.training.loss import model_inputs

        if chunker.unchecked:
            chunker.probe(batch)
        inputs = {k: v for k, v in model_inputs(batch).items() if not k.startswith("teacher_")}
        if chunker.chunked:
            with chunker.hidden_states(), self.autocast():
                return model(**inputs).logits, chunker.head_forward
        with self.autocast():
            return model(**inputs).logits, (lambda x: x)

    def sums_of(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed divergence, summed cross-entropy, tokens predicted exactly) over the batch's
        trained tokens; the first two carry the graph."""
        t, labels = self.t, batch["labels"]
        hidden, head = self._hidden(self.student, model, batch)
        hidden = hidden[:, -labels.shape[1]:, :][:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        h, y = hidden[keep], targets[keep]
        if self.teacher is not None:
            with torch.no_grad():
                th, t_head = self._hidden(self.coach, self.teacher, batch)
                other = th[:, -labels.shape[1]:, :][:, :-1][keep]
            has = torch.ones_like(y, dtype=torch.bool)
        else:
            other = torch.cat([batch["teacher_ids"][:, :-1][keep].float(),
                               batch["teacher_logps"][:, :-1][keep]], dim=-1)
            has = batch["teacher_has"][:, :-1][keep]
            t_head = None
        k = t.teacher_topk_cache

        def piece(h, o, y, has):
            with self.autocast():
                logits = head(h)
            logits = logits.float()
            ce = F.cross_entropy(logits, y, reduction="none")
            if t_head is not None:
                with torch.no_grad(), self.autocast():
                    teacher_logits = t_head(o).float()
                s = F.log_softmax(logits / t.distill_temperature, dim=-1)
                p = F.log_softmax(teacher_logits / t.distill_temperature, dim=-1)
            else:
                ids = o[:, :k].long()
                s, p = student_buckets(logits, ids, t.distill_temperature), o[:, k:]
            div = divergence(t, s, p) * has
            correct = (logits.detach().argmax(-1) == y).sum().float()
            return div.sum(), ce.sum(), correct

        chunk = self.student.chunk_tokens if self.student.chunked else max(1, h.shape[0])
        if h.shape[0] <= chunk:
            return piece(h, other, y, has)
        totals = [h.new_zeros((), dtype=torch.float32) for _ in range(3)]
        for s in range(0, h.shape[0], chunk):
            args = (h[s:s + chunk], other[s:s + chunk], y[s:s + chunk], has[s:s + chunk])
            got = checkpoint(piece, *args, use_reentrant=False) if torch.is_grad_enabled() \
                else piece(*args)
            totals = [a + b for a, b in zip(totals, got)]
        return tuple(totals)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        div, ce, _ = self.sums_of(model, batch)
        self.sums["distill"] += float(div.detach())
        self.sums["ce"] += float(ce.detach())
        self.count += self.units(batch)
        a = self.t.distill_alpha
        return a * div + (1 - a) * ce

    def take_metrics(self, total: Callable[[float], float]) -> dict[str, float]:
        """distill (the divergence) and ce per trained token since the last call."""
        count = total(float(self.count))
        out = {k: total(v) / max(count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {"distill": 0.0, "ce": 0.0}, 0
        return out

    @torch.no_grad()
    def evaluate(self, model, batch) -> tuple[torch.Tensor, ...]:
        """(summed cross-entropy, tokens predicted exactly, trained tokens, summed divergence)
        as float64."""
        div, ce, correct = self.sums_of(model, batch)
        return tuple(x.double() for x in (ce, correct, div.new_tensor(float(
            self.units(batch))), div))

    def eval_metrics(self, totals: list[float]) -> dict[str, float]:
        import math

        ce, correct, count, div = totals
        a, n = self.t.distill_alpha, max(count, 1)
        return {"eval_loss": (a * div + (1 - a) * ce) / n, "eval_distill": div / n,
                "eval_ce": ce / n, "eval_perplexity": math.exp(min(ce / n, 50.0)),
                "eval_token_accuracy": correct / n}


# --------------------------------------------------------------------------- top-k cache


@dataclasses.dataclass
class TopK:
    """The teacher's top-k at every trained position of a split's records: record r's entries
    are rows offsets[r]:offsets[r + 1] of positions (the position within the record that
    predicts the token after it), ids [P, k] and logps [P, k + 1] (the last: the rest)."""

    offsets: torch.Tensor
    positions: torch.Tensor
    ids: torch.Tensor
    logps: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def layout(self, rows: list[list[int]], lengths: list[int], width: int
               ) -> dict[str, torch.Tensor]:
        """teacher_ids [B, width, k], teacher_logps [B, width, k + 1], teacher_has [B, width]
        for a batch whose row b holds records rows[b] end to end (lengths: each record's)."""
        ids = torch.zeros((len(rows), width, self.k), dtype=torch.long)
        logps = torch.full((len(rows), width, self.k + 1), FLOOR, dtype=torch.float32)
        has = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, records in enumerate(rows):
            at = 0
            for r in records:
                lo, hi = int(self.offsets[r]), int(self.offsets[r + 1])
                where = self.positions[lo:hi].long() + at
                ids[b, where] = self.ids[lo:hi].long()
                logps[b, where] = self.logps[lo:hi].float()
                has[b, where] = True
                at += lengths[r]
        return {"teacher_ids": ids, "teacher_logps": logps, "teacher_has": has}


def attach_topk(batches, topk: TopK) -> None:
    """Make `batches` (engine.data.Batches) carry the teacher's cached top-k in every batch."""
    collate = batches.collate
    lengths = batches.lengths

    def with_teacher(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = collate(rows)
        layout = [[i for r in rows for i in r]] if batches.varlen else \
            rows if batches.packing else [r[:1] for r in rows]
        batch.update(topk.layout(layout, lengths, batch["input_ids"].shape[1]))
        return batch

    batches.collate = with_teacher
    batches.teacher_topk = topk


def teacher_fingerprint(cfg) -> dict[str, Any]:
    name = str(cfg.train.teacher)
    files = []
    folder = Path(name).expanduser()
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")):
            st = f.stat()
            files.append([f.name, st.st_size, st.st_mtime_ns])
    return {"teacher": name, "files": files, "dtype": cfg.model.dtype,
            "precision": cfg.train.precision, "k": cfg.train.teacher_topk_cache,
            "temperature": cfg.train.distill_temperature}


def data_digest(dataset) -> str:
    """sha256 of the records' tokens and labels (offsets included), read from Arrow."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    h = hashlib.sha256()
    for column in ("input_ids", "labels"):
        col = table[column].combine_chunks()
        h.update(column.encode())
        h.update(pc.list_value_length(col).to_numpy(zero_copy_only=False).tobytes())
        h.update(pc.list_flatten(col).to_numpy(zero_copy_only=False).tobytes())
    return h.hexdigest()


def cache_file(cfg, dataset, cache_dir: Path | None = None) -> Path:
    from engine.data.cache import default_cache_dir

    material = {"v": CACHE_VERSION, "teacher": teacher_fingerprint(cfg),
                "data": data_digest(dataset)}
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir or default_cache_dir()) / f"teacher-{key[:32]}.safetensors"


@torch.no_grad()
def compute_topk(teacher, dataset, k: int, temperature: float, *, device, autocast=None,
                 pad_id: int = 0, rows: int = ROWS) -> TopK:
    """The teacher's top-k (TopK) at every trained position of every record of `dataset`
    (columns input_ids, labels), each record answered alone."""
    from engine.data.batching import collate_padded
    from engine.training.loss import TokenLoss

    autocast = autocast or contextlib.nullcontext
    chunker = TokenLoss(teacher, autocast=autocast, log=lambda line: None, probe=False)
    n = len(dataset)
    labels_all = dataset["labels"]
    order = sorted(range(n), key=lambda i: len(labels_all[i]))
    per: dict[int, tuple[torch.Tensor, list, list]] = {}
    for at in range(0, n, rows):
        chunk = order[at:at + rows]
        got = dataset[chunk]
        batch = collate_padded(list(zip(got["input_ids"], got["labels"])), pad_id)
        batch = {key: v.to(device) for key, v in batch.items()}
        inputs = {key: v for key, v in batch.items() if key != "labels"}
        if chunker.chunked:
            with chunker.hidden_states(), autocast():
                hidden = teacher(**inputs).logits
            head = chunker.head_forward
        else:
            with autocast():
                hidden = teacher(**inputs).logits
            head = lambda x: x  # noqa: E731
        keep = batch["labels"][:, 1:] != IGNORE_INDEX
        for b, r in enumerate(chunk):
            where = keep[b].nonzero().squeeze(-1)
            pieces_ids, pieces_logps = [], []
            step = chunker.chunk_tokens if chunker.chunked else max(1, len(where))
            for s in range(0, len(where), step):
                with autocast():
                    logits = head(hidden[b, where[s:s + step]])
                ids, logps = teacher_buckets(logits, k, temperature)
                pieces_ids.append(ids.to(torch.int32).cpu())
                pieces_logps.append(logps.cpu())
            per[r] = (where.to(torch.int32).cpu(), pieces_ids, pieces_logps)
    vocab = chunker.head.weight.shape[0] if chunker.chunked else teacher.config.vocab_size
    k_real = min(k, vocab)
    per = {r: (where, torch.cat(ids) if ids else torch.zeros((0, k_real), dtype=torch.int32),
               torch.cat(logps) if logps else torch.zeros((0, k_real + 1)))
           for r, (where, ids, logps) in per.items()}
    counts = torch.tensor([len(per[r][0]) for r in range(n)], dtype=torch.long)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    return TopK(offsets=offsets,
                positions=torch.cat([per[r][0] for r in range(n)]) if n else
                torch.zeros(0, dtype=torch.int32),
                ids=torch.cat([per[r][1].reshape(-1, k_real) for r in range(n)]),
                logps=torch.cat([per[r][2].reshape(-1, k_real + 1) for r in range(n)]))


def precompute_topk(cfg, teacher_loader: Callable[[], Any], batch_sets: list, *,
                    log: Callable[[str], None] = print,
                    main_first: Callable[[], Any] = contextlib.nullcontext, device=None,
                    autocast=None, pad_id: int = 0, cache_dir: Path | None = None) -> list[bool]:
    """Attach the teacher's cached top-k to each Batches of `batch_sets` (None skipped), read
    from the cache or computed with the teacher teacher_loader() gives (loaded only when some
    split is not cached, and dropped after); returns, per set, whether it came from the cache."""
    from safetensors.torch import load_file, save_file

    k, temp = cfg.train.teacher_topk_cache, cfg.train.distill_temperature
    teacher, hits = None, []
    for batches in batch_sets:
        if batches is None:
            continue
        path = cache_file(cfg, batches.dataset, cache_dir)
        with main_first():
            topk = None
            if path.is_file():
                try:
                    topk = TopK(**load_file(str(path)))
                    if len(topk.offsets) != len(batches.dataset) + 1:
                        topk = None
                except Exception as exc:  # noqa: BLE001 - a damaged entry is computed again
                    log(f"teacher: cache entry {path.name} is unreadable ({exc}); computing "
                        "again")
                    topk = None
            hit = topk is not None
            if not hit:
                teacher = teacher if teacher is not None else teacher_loader()
                started = time.perf_counter()
                topk = compute_topk(teacher, batches.dataset, k, temp, device=device,
                                    autocast=autocast, pad_id=pad_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
                save_file({f.name: getattr(topk, f.name).contiguous()
                           for f in dataclasses.fields(TopK)}, str(tmp))
                os.replace(tmp, path)
                log(f"teacher: top-{k} log-probs of {len(topk.positions)} answer tokens in "
                    f"{len(batches.dataset)} records computed once in "
                    f"{time.perf_counter() - started:.1f}s -> {path.name}")
            else:
                log(f"teacher: top-{k} log-probs of {len(batches.dataset)} records from the "
                    f"cache ({path.name})")
        attach_topk(batches, topk)
        hits.append(hit)
    if teacher is not None:
        del teacher
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log("teacher: freed; the student trains against the cached top-k")
    return hits


# --------------------------------------------------------------------------- in the train loop


def make_distill_loss(cfg, model, tokenizer, accelerator, info: dict[str, Any], batch_sets: list,
                      log: Callable[[str], None]) -> DistillLoss:
    """The DistillLoss of a run (engine.training.loop's setup): the teacher loaded beside the
    student, or with train.teacher_topk_cache its top-k cached on the batches and the teacher
    freed."""
    def teacher() -> Any:
        return load_teacher(cfg, tokenizer, accelerator.device, info["attention"], log)

    if cfg.train.teacher_topk_cache:
        precompute_topk(cfg, teacher, batch_sets, log=log,
                        main_first=accelerator.main_process_first, device=accelerator.device,
                        autocast=accelerator.autocast, pad_id=tokenizer.pad_token_id or 0)
        return DistillLoss(model, None, cfg.train, autocast=accelerator.autocast, log=log)
    return DistillLoss(model, teacher(), cfg.train, autocast=accelerator.autocast, log=log)


# --------------------------------------------------------------------------- the card


def _folder_facts(folder: Path) -> dict[str, Any]:
    from engine.models.catalog import safetensors_params

    files = list(Path(folder).glob("*.safetensors"))
    return {"params": safetensors_params(folder),
            "bytes": sum(f.stat().st_size for f in files) if files else None}


def summary(cfg, out: Path) -> dict[str, Any] | None:
    """Teacher vs student after a distillation run: parameters, weights on disk, generation
    tokens/s on this machine (the evaluation's greedy answers to the same prompts) and each
    generation metric with its 95% interval; None without an evaluation (out/eval.json)."""
    from engine.evaluation.evaluate import read_record

    record = read_record(out / "eval.json")
    teacher_dir = Path(str(cfg.train.teacher)).expanduser()
    student_dir = out / "adapter" if cfg.method.kind == "full" else \
        Path(cfg.model.name).expanduser()
    sides = {"teacher": _folder_facts(teacher_dir) if teacher_dir.is_dir() else {},
             "student": _folder_facts(student_dir) if student_dir.is_dir() else {}}
    if record and record.get("baseline") == "teacher":
        tokens, seconds = record.get("new_tokens") or {}, record.get("seconds") or {}
        for side, key in (("teacher", "base"), ("student", "tuned")):
            if tokens.get(key) and seconds.get(key):
                sides[side]["tokens_per_s"] = round(tokens[key] / seconds[key], 1)
            sides[side]["metrics"] = {
                m: {"value": v[key], "ci": v[f"{key}_ci"]}
                for m, v in record["metrics"].items() if v.get(key) is not None}
        kept = {m: v["tuned"] / v["base"] for m, v in record["metrics"].items()
                if v.get("base")}
        return {"teacher_model": str(cfg.train.teacher), "student_model": str(student_dir),
                "n": record.get("n"), "source": record.get("source"), **sides, "kept": kept,
                "delta_ci": {m: v.get("delta_ci") for m, v in record["metrics"].items()}}
    return {"teacher_model": str(cfg.train.teacher), "student_model": str(student_dir), **sides}


def card(facts: dict[str, Any]) -> str:
    """distill.md: the summary as a table a person reads."""
    from engine.models.estimate import human_bytes

    t, s = facts.get("teacher", {}), facts.get("student", {})

    def count(x):
        return f"{x:,}" if isinstance(x, int) else "?"

    def size(x):
        return human_bytes(x) if x else "?"

    def speed(x):
        return f"{x:g}" if x else "?"

    rows = ["| | teacher | student | student / teacher |", "| --- | --- | --- | --- |",
            f"| parameters | {count(t.get('params'))} | {count(s.get('params'))} | "
            f"{_share(s.get('params'), t.get('params'))} |",
            f"| weights on disk | {size(t.get('bytes'))} | {size(s.get('bytes'))} | "
            f"{_share(s.get('bytes'), t.get('bytes'))} |",
            f"| generation tokens/s (this machine) | {speed(t.get('tokens_per_s'))} | "
            f"{speed(s.get('tokens_per_s'))} | "
            f"{_share(s.get('tokens_per_s'), t.get('tokens_per_s'))} |"]
    for m, v in (s.get("metrics") or {}).items():
        tv = (t.get("metrics") or {}).get(m, {})
        rows.append(f"| {m} | {_ci(tv)} | {_ci(v)} | {_share(v.get('value'), tv.get('value'))} |")
    where = (f"Generation metrics: greedy answers to {facts['n']} prompts of the "
             f"{facts['source']}, 95% bootstrap intervals in brackets." if facts.get("n") else
             "No generation evaluation ran (train.eval_generate off, or no validation split).")
    student = Path(facts["student_model"])
    title = student.parent.name if student.name == "adapter" else student.name
    return "\n".join([f"# Distilled: {title}", "",
                      f"Teacher `{facts['teacher_model']}`, student `{facts['student_model']}`.",
                      "", *rows, "", where, ""])


def _share(a, b) -> str:
    return f"{a / b:.1%}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b \
        else "?"


def _ci(v: dict) -> str:
    if v.get("value") is None:
        return "?"
    lo, hi = v.get("ci") or (None, None)
    return f"{v['value']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def write_card(cfg, out: Path, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """distill.md and the summary (returned, for run.json) of a finished distillation run."""
    facts = summary(cfg, out)
    if facts is None:
        return None
    (out / "distill.md").write_text(card(facts), encoding="utf-8")
    kept = facts.get("kept", {}).get("exact_match")
    log("distill: teacher vs student in distill.md" + (
        f"; the student keeps {kept:.0%} of the teacher's exact match" if kept is not None
        else ""))
    return facts
