"""How a run ended, in words a person can act on: an error line and a hint.

The runner explains the exceptions it catches (explain_exception); the worker explains a child
that died without saying why: a signal, or a non-zero exit with a traceback in log.txt
(explain_exit). Both return (error, hint).
"""

from __future__ import annotations

import signal
from pathlib import Path

OOM_HINT = ("out of memory: lower train.batch_size (raise train.grad_accum to keep the "
            "effective batch), lower data.max_seq_len, enable train.gradient_checkpointing or "
            "use method.kind=qlora")


def explain_exception(exc: BaseException, data_file: str | None = None,
                      log_path: str | Path | None = None) -> tuple[str, str]:
    name = type(exc).__name__
    text = str(exc).strip() or name
    see_log = f"the traceback is in {log_path}" if log_path else "see the job's log"
    if _is_oom(name, text):
        return f"{name}: {_first_line(text)}", OOM_HINT
    if any(c.__name__ == "DataError" for c in type(exc).__mro__):
        where = f"fix {data_file}" if data_file else "fix the data file"
        return text, (f"{where} (the error names the record and field), or set "
                      "data.on_bad_record=skip; check it first with `ftstudio data check "
                      f"{data_file or 'FILE'}`")
    if name == "ConfigError":
        return text, "fix these settings and submit again; `ftstudio config --check` lists them"
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return f"{name}: {text}", ("a file the job needs cannot be read from the worker: paths "
                                   "must exist on the worker's machine (use FTSTUDIO_HOME on a "
                                   f"shared volume); {see_log}")
    if isinstance(exc, ImportError):
        return f"{name}: {text}", f"a package is missing on the worker: pip install it; {see_log}"
    return f"{name}: {_first_line(text)}", see_log


def explain_exit(returncode: int, log_path: str | Path | None = None, job_id: str = "ID",
                 what: str = "the training process") -> tuple[str, str]:
    tail = _tail(log_path)
    if returncode < 0:
        sig = -returncode
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = "unknown signal"
        error = f"{what} was killed by signal {sig} ({signame})"
        if sig == signal.SIGKILL:
            return error, ("SIGKILL usually means the machine ran out of memory (the kernel's "
                           "OOM killer; see `dmesg`): " + OOM_HINT.removeprefix("out of memory: ")
                           + "; or something killed it by hand")
        if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL):
            return error, ("it crashed inside native code (CUDA, bitsandbytes or a kernel); see "
                           f"{log_path or 'log.txt'}; try train.precision=fp32 or another "
                           f"torch build, then `ftstudio jobs resume {job_id}`")
        return error, ("something outside ftstudio stopped it; continue from the last "
                       f"checkpoint with `ftstudio jobs resume {job_id}`")
    last = next((ln for ln in reversed(tail) if ln.strip()), "")
    error = last.strip() or f"{what} exited with code {returncode}"
    if _is_oom("", "\n".join(tail)):
        return error, OOM_HINT
    return error, f"the traceback is in {log_path or 'log.txt'}"


def _is_oom(name: str, text: str) -> bool:
    return name == "OutOfMemoryError" or "out of memory" in text.lower()


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def _tail(path: str | Path | None, n_bytes: int = 8192) -> list[str]:
    if not path or not Path(path).is_file():
        return []
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - n_bytes))
        return f.read().decode("utf-8", "replace").splitlines()
