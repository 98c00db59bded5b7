"""jobs/bundles.py: the downloads both front ends get, written atomically in the job's folder."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs import bundles
from jobs.store import JobError


def _job(home, job_id="b1"):
    folder = home / "jobs" / job_id
    folder.mkdir(parents=True)
    return {"id": job_id, "output_dir": str(folder)}, folder


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    out = tmp_path / "exports" / "bundle.zip"
    bundles.write_text(out, "the old one")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        bundles.write_atomic(out, broken)
    assert out.read_text() == "the old one"
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle.zip"]


def test_two_writers_of_the_same_bundle_do_not_mix(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 2_000_000)
    out = tmp_path / "exports" / "same.zip"
    with ThreadPoolExecutor(4) as pool:     # a writer's error would raise here
        list(pool.map(lambda _: bundles.write_zip(out, [(src, "big.bin")]), range(4)))
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None and zf.read("big.bin") == src.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["same.zip"]


def test_job_bundles(home):
    job, folder = _job(home)
    with pytest.raises(FileNotFoundError, match="no run files"):
        bundles.run_zip(job)
    with pytest.raises(FileNotFoundError, match="no adapter yet"):
        bundles.adapter_zip(job)
    (folder / "config.yaml").write_text("model: {}\n")
    (folder / "log.txt").write_text("step 1\n")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    with zipfile.ZipFile(bundles.run_zip(job)) as zf:
        assert sorted(zf.namelist()) == ["config.yaml", "log.txt"]
    with zipfile.ZipFile(bundles.adapter_zip(job)) as zf:
        assert zf.namelist() == ["adapter/adapter_config.json"]
    path = bundles.metrics_csv(job, [{"step": 2, "loss": 1.5, "eval_loss": 1.25},
                                     {"step": 1, "loss": 2.0, "lr": 0.1}])
    assert path == (folder / "exports" / "job-b1-metrics.csv").resolve()
    assert path.read_text().splitlines() == ["step,loss,eval_loss,lr", "1,2.0,,0.1",
                                             "2,1.5,1.25,"]
    with pytest.raises(FileNotFoundError, match="no metrics"):
        bundles.metrics_csv(job, [])


def test_a_link_out_of_the_folder_is_refused_before_anything_is_written(home, tmp_path):
    job, folder = _job(home)
    (folder / "adapter").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    (folder / "adapter" / "leak.txt").symlink_to(secret)
    with pytest.raises(JobError, match="leads outside job b1's folder"):
        bundles.adapter_zip(job)
    assert not (folder / "exports").exists()
