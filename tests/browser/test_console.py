"""The web console in a real browser: a newcomer trains from a file, watches the curves, tries
the adapter and deletes it; every task type's try-it page; errors next to their fields; keys;
a thousand adapters a page at a time. No request leaves the server (checked after each test)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.adapters.format import join, new_metadata
from app.adapters.store import AdapterStore
from app.config import Settings
from app.model.encoder import FrozenEncoder
from app.tasks import HeadConfig
from app.training.jobs import JobDB
from tests.browser.conftest import Console
from tests.conftest import AdapterFactory, random_adapter
from tests.unit.test_training_loop import sentiment_rows

pytestmark = pytest.mark.slow
ConsoleFor = Callable[[Settings], Console]
QUICK = {"learning_rate": "0.03", "batch_size": "8"}


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return Settings(base_model=str(tiny_model_dir), adapters_dir=tmp_path / "store",
                    store_poll_seconds=0, num_threads=1, train_threads=1, train_nice=0,
                    cancel_grace_seconds=5, max_train_rows=500, preload_adapters=False)


def _fill_train_form(page: Any, name: str, rows_file: Path, epochs: str = "3") -> None:
    page.fill("input[name=name]", name)
    page.select_option("select[name=task_type]", "classification")
    page.set_input_files("input[name=file]", str(rows_file))
    page.fill("input[name=epochs]", epochs)
    for field, value in QUICK.items():
        page.fill(f"input[name={field}]", value)


def _rows_file(tmp_path: Path, n: int = 64, csv: bool = False) -> Path:
    """The rows as JSONL, or as the spreadsheet export a newcomer has (CSV: text,label)."""
    rows = sentiment_rows(n)
    if csv:
        path = tmp_path / "reviews.csv"
        path.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows))
    else:
        path = tmp_path / "reviews.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("keys", [False, True], ids=["open", "admin-key"])
def test_newcomer_trains_watches_tries_and_deletes(
        console_for: ConsoleFor, settings: Settings, make_adapter: AdapterFactory,
        tmp_path: Path, keys: bool) -> None:
    make_adapter(AdapterStore(settings.adapters_dir), "spam-filter", seed=1,
                 metrics={"validation": {"epoch": 2, "accuracy": 0.93, "macro_f1": 0.92}})
    console = console_for(settings.model_copy(update={"api_keys": "ak:admin" if keys else ""}))
    page = console.open("/")
    page.set_default_timeout(120_000)
    if keys:  # the same, once the key is given
        page.fill("#key-input", "ak")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("body[data-scope=admin]")
    assert page.locator("table.list tr[data-name=spam-filter]").count() == 1
    assert "accuracy 0.93" in page.inner_text("tr[data-name=spam-filter]")
    shot = console.shot if not keys else (lambda name: None)  # the docs show the open run
    shot("adapters")

    page.click("nav >> text=Train")
    console.ready("/ui/train")
    _fill_train_form(page, "reviews", _rows_file(tmp_path, csv=True))
    assert page.get_attribute("input[name=batch_size]", "placeholder") == "default 32"
    shot("train")
    page.click("main button[type=submit]")
    page.wait_for_selector("section.page[data-status=succeeded]")  # followed over SSE
    assert int(page.get_attribute("#loss-chart", "data-points") or 0) > 0
    assert page.locator("#loss-chart canvas").count() >= 1
    epochs = int(page.get_attribute("#metrics-chart", "data-points") or 0)
    kept = page.get_attribute("#metrics-chart", "data-marked")
    assert epochs >= 1 and kept is not None and 1 <= int(kept) <= epochs
    assert f"Kept epoch {kept}" in page.inner_text("p.result")
    shot("job")

    page.click("main a >> text=Try it")
    console.ready("/ui/try/reviews")
    page.fill("textarea[name=text]", "a truly wonderful film")
    page.click("main button[type=submit]")
    answer = page.wait_for_selector(".output strong.label").inner_text()
    assert answer in ("neg", "pos")
    assert page.locator(".bars .bar").count() == 2
    assert "Answered by reviews v1" in page.inner_text(".output .meta")
    shot("try-classification")

    page.click("nav >> text=Jobs")
    console.ready("/ui/jobs")
    assert page.locator("tr[data-job] .badge.succeeded").count() == 1
    shot("jobs")

    page.goto(console.url + "/ui/adapters/reviews")
    console.ready("/ui/adapters/reviews")
    assert "classification" in page.inner_text("dl.facts")
    shot("adapter")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("main button.danger")
    console.ready("/ui/adapters")
    assert page.locator("tr[data-name=reviews]").count() == 0
    headers = {"Authorization": "Bearer ak"} if keys else {}
    assert httpx.get(f"{console.url}/adapters/reviews", headers=headers).status_code == 404


def _store_crafted(encoder: FrozenEncoder, store: AdapterStore, name: str, head: HeadConfig,
                   favour: int | None = None) -> None:
    """A random adapter whose head (if `favour` is set) always picks that output: so a
    token-classification adapter finds an entity in every word."""
    adapter, head_module, head_cfg = random_adapter(encoder, head=head, seed=7)
    if favour is not None:
        last = [m for m in head_module.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[favour] = 5.0
    store.save(new_metadata(name, head_cfg, adapter.config, encoder.info),
               join(adapter.state_dict(), head_module.state_dict()))


@pytest.mark.parametrize(("task_type", "labels", "favour", "inputs", "expect"), [
    ("classification", ["neg", "pos"], None, {"text": "a film", "text_pair": "a movie"},
     ".bars .bar.chosen"),
    ("multi_label_classification", ["spam", "urgent"], None, {"text": "buy now"}, ".bars .bar"),
    ("regression", [], None, {"text": "a man plays", "text_pair": "a person plays"},
     ".output strong.label"),
    ("token_classification", ["O", "B-PER", "I-PER"], 1, {"text": "Ada met Grace in London"},
     "p.marked mark.span[data-label=PER]"),
    ("question_answering", [], None, {"question": "Who wrote it?",
                                      "context": "It was written by Ada in London."},
     "p.marked mark.span"),
])
def test_each_task_type_draws_its_answer(
        console_for: ConsoleFor, settings: Settings, encoder: FrozenEncoder, task_type: str,
        labels: list[str], favour: int | None, inputs: dict[str, str], expect: str) -> None:
    _store_crafted(encoder, AdapterStore(settings.adapters_dir), "probe",
                   HeadConfig(task_type=task_type, labels=labels), favour)
    console = console_for(settings)
    page = console.open("/ui/try/probe")
    for field, text in inputs.items():
        page.fill(f"textarea[name={field}]", text)
    page.check("input[name=explain]")
    page.click("main button[type=submit]")
    page.wait_for_selector(expect)
    assert "Answered by probe v1" in page.inner_text(".output .meta")
    # The words shaded by their attributions: every word of every text the answer drew on
    # (for NER, per entity: the first entity's).
    shown = page.locator(".words").first.locator(".word").all_inner_texts()
    if task_type != "token_classification":
        shown = page.locator(".words .word").all_inner_texts()
    assert "".join(shown) == "".join(inputs.values()).replace(" ", "")
    if task_type == "token_classification":  # each highlighted word is a word of the input
        marks = page.locator("mark.span").all_inner_texts()
        assert [m.replace("PER", "").strip() for m in marks] == "Ada met Grace in London".split()
    console.shot(f"try-{task_type}")


def test_train_form_shows_api_errors_next_to_their_field(
        console_for: ConsoleFor, settings: Settings, tmp_path: Path) -> None:
    console = console_for(settings)
    page = console.open("/ui/train")
    _fill_train_form(page, "reviews", _rows_file(tmp_path), epochs="0")
    page.click("main button[type=submit]")
    epochs_error = page.wait_for_selector("label:has(input[name=epochs]) .field-error")
    assert "greater than or equal to 1" in epochs_error.inner_text()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "pos"}\nnot json\n')
    page.fill("input[name=epochs]", "2")
    page.set_input_files("input[name=file]", str(bad))
    page.click("main button[type=submit]")
    rows_error = page.wait_for_selector(".field.rows .field-error")
    assert "line 2 is not valid JSON" in rows_error.inner_text()
    assert page.locator("label:has(input[name=epochs]) .field-error").count() == 0
    console.shot("train-errors")
    assert httpx.get(f"{console.url}/jobs").json()["jobs"] == []


def test_keys_predict_key_reads_admin_key_trains(
        console_for: ConsoleFor, settings: Settings, make_adapter: AdapterFactory) -> None:
    make_adapter(AdapterStore(settings.adapters_dir), "sentiment", seed=1)
    console = console_for(settings.model_copy(update={"api_keys": "rk:predict,ak:admin"}))
    page = console.open("/")
    assert "An API key is needed" in page.inner_text("main")

    page.fill("#key-input", "wrong")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#scope .badge.failed")

    page.fill("#key-input", "rk")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("tr[data-name=sentiment]")
    assert page.inner_text("#scope") == "predict key"
    page.click("nav >> text=Train")
    console.ready("/ui/train")
    assert "Training needs an admin key" in page.inner_text("main")
    assert page.locator("form.train").count() == 0
    console.shot("train-predict-key")
    page.goto(console.url + "/ui/adapters/sentiment")  # a reload keeps the key (sessionStorage)
    console.ready("/ui/adapters/sentiment")
    assert page.inner_text("#scope") == "predict key"
    assert page.locator("main button.danger").count() == 0  # no delete for a predict key

    page.fill("#key-input", "ak")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("main button.danger")
    page.click("nav >> text=Train")
    page.wait_for_selector("form.train")


def _start_long_job(console: Console, tmp_path: Path, name: str) -> Any:
    page = console.open("/ui/train")
    page.set_default_timeout(120_000)
    _fill_train_form(page, name, _rows_file(tmp_path, 400), epochs="100")
    page.fill("input[name=max_train_seconds]", "600")
    page.click("main button[type=submit]")
    page.wait_for_selector("section.page[data-status=running]")
    page.wait_for_selector(".status-line >> text=/step [1-9]/")  # the worker reports
    return page


def test_cancel_and_failure_on_the_job_page(console_for: ConsoleFor, settings: Settings,
                                            tmp_path: Path) -> None:
    console = console_for(settings)
    page = _start_long_job(console, tmp_path, "long")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("main button.danger")
    page.wait_for_selector("section.page[data-status=cancelled]")
    assert httpx.get(f"{console.url}/adapters/long").status_code == 404

    page = _start_long_job(console, tmp_path, "doomed")
    job_id = page.url.rsplit("/", 1)[1]
    pid = JobDB(settings.jobs_db_path).get(job_id).worker_pid
    assert pid and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    page.wait_for_selector("section.page[data-status=failed]")
    error = page.inner_text("pre.error")
    assert "killed by SIGKILL" in error and "nothing was stored" in error  # the error in full
    console.shot("job-failed")


def test_a_thousand_adapters_search_and_pages(
        console_for: ConsoleFor, settings: Settings, encoder: FrozenEncoder) -> None:
    store = AdapterStore(settings.adapters_dir)
    adapter, head, head_cfg = random_adapter(encoder)
    weights = join(adapter.state_dict(), head.state_dict())
    for i in range(1000):  # one set of weights saved under many names: what listing sees
        store.save(new_metadata(f"task-{i:04d}", head_cfg, adapter.config, encoder.info), weights)
    console = console_for(settings)
    page = console.open("/")
    names = page.locator("tr[data-name]")
    assert names.count() == 50 and names.first.get_attribute("data-name") == "task-0000"
    page.click("text=Next →")
    page.wait_for_selector("tr[data-name=task-0050]")
    page.click("text=Next →")
    page.wait_for_selector("tr[data-name=task-0100]")
    page.click("text=← Previous")
    page.wait_for_selector("tr[data-name=task-0050]")
    page.click("text=← Previous")
    page.wait_for_selector("tr[data-name=task-0000]")
    page.fill("input[name=q]", "-09")
    page.click("form.search button")
    page.wait_for_selector("tr[data-name=task-0900]")
    assert names.count() == 50 and names.last.get_attribute("data-name") == "task-0949"
    page.click("text=Next →")
    page.wait_for_selector("tr[data-name=task-0999]")
    assert names.count() == 50 and names.first.get_attribute("data-name") == "task-0950"
    assert page.locator("text=Next →").count() == 0
    console.shot("adapters-search", full_page=False)


def test_first_load_is_timed(console_for: ConsoleFor, settings: Settings,
                             screenshots: Path) -> None:
    """Records how long a first visit takes to show the adapters (bench/bench_console.py
    holds the target; a test only records, since CI shares its cores)."""
    console = console_for(settings)
    page = console.open("/")
    ready_ms = float(page.get_attribute("body", "data-ready-at") or "nan")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    assert ready_ms > 0 and load_ms > 0
    (screenshots / "first-load.json").write_text(json.dumps(
        {"view_ready_ms": ready_ms, "load_event_ms": load_ms}))


def test_a_search_job_shows_its_trials(console_for: ConsoleFor, settings: Settings) -> None:
    console = console_for(settings)
    config = {"learning_rate": 0.03, "batch_size": 8, "base_dropout": False,
              "search": {"trials": 3, "budget_s": 600, "space": {"epochs": [1, 2]}}}
    r = httpx.post(f"{console.url}/adapters", json={
        "name": "searched", "task_type": "classification", "train": sentiment_rows(64),
        "config": config})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    page = console.open(f"/ui/jobs/{job_id}")
    page.wait_for_selector("section.page[data-status=succeeded]", timeout=120_000)
    search = httpx.get(f"{console.url}/jobs/{job_id}").json()["search"]
    rows = page.locator("section.trials tbody tr")
    assert rows.count() == 3
    assert page.get_attribute("section.trials tr.winner", "data-trial") == str(search["winner"])
    assert "Winner: " in page.inner_text("section.trials p.why")
    # one curve per trial, over as many epochs as the longest trial ran
    longest = max(len(t["curve"]) for t in search["trials"])
    assert page.get_attribute("#metrics-chart", "data-points") == str(longest)
    assert page.locator("#metrics-chart .u-legend .u-series").count() == 1 + 3
    console.shot("job-search")
