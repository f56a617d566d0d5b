"""The job's loss curve: bounded, faithful to the means, and kept by databases made before it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.training.curve import LossCurve
from app.training.jobs import JobDB


def test_short_curve_keeps_every_step() -> None:
    curve = LossCurve(max_points=8)
    for step in range(1, 6):
        curve.add(step, 1.0 / step)
    assert curve.points() == [[s, round(1.0 / s, 5)] for s in range(1, 6)]


def test_long_curve_stays_bounded_and_each_point_is_the_mean_of_its_steps() -> None:
    curve = LossCurve(max_points=8)
    for step in range(1, 101):
        curve.add(step, float(step))
    points = curve.points()
    assert len(points) <= 8 and curve.width == 16
    assert points[-1][0] == 100  # reaches the latest step, unfinished point included
    start = 0
    for step, loss in points:  # steps (start, step] average to loss
        assert loss == pytest.approx(sum(range(start + 1, int(step) + 1)) / (step - start))
        start = int(step)


def test_odd_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        LossCurve(max_points=7)


def test_database_of_an_older_release_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as old:  # the table as releases before the loss curve made it
        old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, task_type TEXT "
                    "NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, "
                    "finished_at REAL, spec TEXT NOT NULL, progress TEXT, history TEXT NOT NULL "
                    "DEFAULT '[]', result TEXT, adapter_version INTEGER, error TEXT, "
                    "cancel_requested INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER)")
        old.execute("INSERT INTO jobs (id, name, task_type, status, created_at, spec) "
                    "VALUES ('j1', 'old', 'classification', 'succeeded', 1.0, '{}')")
    db = JobDB(path)
    assert db.get("j1").loss_curve == [] and db.get("j1").search is None  # both columns added
    job = db.create("new", "classification", {}, {"train": []}, max_queued=5)
    db.claim_next()
    db.report_progress(job.id, {"step": 1}, [[1, 0.5]])
    assert db.get(job.id).loss_curve == [[1, 0.5]]
    db.report_search(job.id, {"trials": []})
    assert db.get(job.id).search == {"trials": []}
