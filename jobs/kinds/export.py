"""An export job (kind "export", config {"format", "parent", "verify"}): engine.export.export on
its parent's folder, logging each stage (job.step counts them; a cancel stops it between
stages). It records each file with its size as an artifact of the PARENT (the rows of an
earlier export in that format go when it starts), and fails with the engine's message as its
hint on ExportError. The export verifies its files (config "verify", default true) and the
job's result keeps the verification's status, line and failed checks ("unverified" exports
complete: the files stand).
"""

from __future__ import annotations

from jobs import store
from jobs.endings import job_end
from jobs.kinds.stages import run_stages


def run(job: dict, reporter) -> int:
    from engine.export import ExportError, export

    fmt, parent_id = job["config"]["format"], job["config"]["parent"]
    parent_dir = store.folder_of(reporter.job_row(parent_id))

    def work(log):
        reporter.replace_exports(parent_id, fmt, [])  # exports/<fmt>/ is about to be rewritten
        return export(parent_dir, fmt, log=log, verify=job["config"].get("verify", True))

    result, code = run_stages(job, reporter, work, f"export {fmt}", ExportError,
                              f"cannot export job {parent_id} as {fmt}")
    if result is None:
        return code
    reporter.replace_exports(parent_id, fmt, [(a.path, a.bytes) for a in result.artifacts],
                             meta={"export_job": job["id"]})
    reporter.end(job_end(job, "finished"), progress=1.0, result={
        "format": fmt, "parent": parent_id, "files": len(result.artifacts),
        "out_dir": result.out_dir.relative_to(parent_dir).as_posix(),
        "total_bytes": result.total_bytes, "verification": verification(result.verification)})
    return 0


def verification(record: dict | None) -> dict | None:
    """What the export job keeps of its verification (the whole record is verify.json in the
    export folder): status, the line people read, and each check that failed."""
    if not record:
        return None
    return {"status": record.get("status"), "line": record.get("line"),
            "runtimes": record.get("runtimes"), "n": record.get("n"),
            "seconds": (record.get("seconds") or {}).get("total"),
            "failed": [c for c in record.get("checks") or [] if not c.get("ok")]}
