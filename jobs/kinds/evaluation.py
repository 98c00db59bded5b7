"""An eval job (kind "eval", config {"parent", "data", "max_new_tokens", "max_records"}):
engine.evaluation.evaluate.evaluate_run over its parent's run folder (base vs tuned answers to
the held-out prompts, or to those of `data`). The record goes into the eval job's folder as
eval.json and, as rows, under the PARENT job (jobs.store.add_eval), whose page shows it.
"""

from __future__ import annotations

from jobs import store
from jobs.endings import job_end
from jobs.kinds.stages import run_stages


def run(job: dict, reporter) -> int:
    from engine.evaluation.evaluate import EvalError, card_line, evaluate_run

    cfg, parent_id = job["config"], job["config"]["parent"]
    folder = store.folder_of(job)
    folder.mkdir(parents=True, exist_ok=True)
    parent_dir = store.folder_of(reporter.job_row(parent_id))

    def work(log):
        return evaluate_run(parent_dir, cfg.get("data"), max_new_tokens=cfg.get(
            "max_new_tokens"), max_records=cfg.get("max_records"), out=folder / "eval.json",
            log=log)

    record, code = run_stages(job, reporter, work, "evaluation", EvalError,
                              f"cannot evaluate job {parent_id}", data_file=cfg.get("data"))
    if record is None:
        return code
    eval_id = reporter.add_eval(parent_id, record, kind="job", path=folder / "eval.json",
                                eval_job=job["id"])
    reporter.end(job_end(job, "finished"), progress=1.0, result={
        "parent": parent_id, "eval_id": eval_id, "n": record["n"], "card": card_line(record),
        **{f"tuned_{k}": v["tuned"] for k, v in record["metrics"].items()}})
    return 0
