"""app.client against a real server (uvicorn in a thread, the tiny model): every method, errors
as exceptions carrying the API's body, wait() following a job's events to its end; the CLI's
client commands and its progress display."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import cli
from app.adapters.store import AdapterStore
from app.client import AsyncClient, Client, Invalid, JobFailed, NotFound, ServerError
from app.client.calls import Follower
from app.client.progress import Bar, Lines, Silent, display
from app.client.sync import http_options
from app.config import Settings, get_settings
from app.model.adapter import AdapterConfig
from app.schemas.jobs import JobView
from app.tasks import HeadConfig
from tests.api.helpers import QUICK, SLOW
from tests.conftest import AdapterFactory
from tests.live import live_server
from tests.unit.test_training_loop import sentiment_rows


@pytest.fixture
def url(train_settings: Settings, make_adapter: AdapterFactory) -> Iterator[str]:
    """A live server with `sentiment` (v1, v2), `similarity` (regression), `lora`
    (a head PEFT's BERT can load) and `hub` (one AdapterHub can load)."""
    store = AdapterStore(train_settings.adapters_dir)
    make_adapter(store, "sentiment", seed=1)
    make_adapter(store, "sentiment", seed=2)
    make_adapter(store, "similarity", seed=3, head=HeadConfig(task_type="regression"))
    make_adapter(store, "lora", seed=4, config=AdapterConfig(method="lora"),
                 head=HeadConfig(task_type="classification", labels=["neg", "pos"],
                                 use_pooler=True, layers=1))
    make_adapter(store, "hub", seed=5, head=HeadConfig(task_type="classification",
                                                       labels=["neg", "pos"], pooling="cls"))
    with live_server(train_settings) as url:
        yield url


@pytest.mark.slow
def test_read_methods(url: str) -> None:
    with Client(url) as c:
        assert c.health().status == "ok"
        assert c.ready().status == "ready"
        answer = c.predict("sentiment", ["a fine film", "dull"], version=1)
        assert answer.version == 1 and len(answer.predictions) == 2
        assert c.predict("sentiment", "one text").version == 2
        explained = c.predict("sentiment", ["a fine film"], explain=True, explain_steps=4)
        assert [w.text for w in explained.predictions[0].attributions] == ["a", "fine", "film"]
        assert explained.predictions[0].explanation.steps == 4
        assert {"value"} <= set(c.predict("similarity", [{"text": "a", "text_pair": "b"}])
                                 .predictions[0].model_dump())
        page = c.adapters(limit=1)
        assert [a.name for a in page.adapters] == ["hub"] and page.next_cursor
        assert [a.name for a in c.iter_adapters(page_size=1)] == ["hub", "lora", "sentiment",
                                                                    "similarity"]
        assert [a.name for a in c.iter_adapters(prefix="s")] == ["sentiment", "similarity"]
        assert [a.name for a in c.adapters(contains="mil").adapters] == ["similarity"]
        assert c.whoami().scope == "admin" and not c.whoami().keys_required
        assert "question_answering" in {t.name for t in c.task_types().task_types}
        detail = c.adapter("sentiment", version=1)
        assert (detail.version, detail.versions, detail.labels) == (1, [1, 2], ["neg", "pos"])


@pytest.mark.slow
def test_errors_carry_the_api_body(url: str) -> None:
    with Client(url) as c:
        with pytest.raises(NotFound) as missing:
            c.predict("nobody", "text")
        assert (missing.value.status, missing.value.code) == (404, "adapter_not_found")
        assert missing.value.request_id and "nobody" in missing.value.message
        with pytest.raises(Invalid) as empty:
            c.predict("sentiment", [])
        assert (empty.value.status, empty.value.code) == (422, "invalid_input")
        assert "inputs is empty" in empty.value.message
        with pytest.raises(Invalid) as invalid:
            c.predict("sentiment", "x", max_answer_tokens=0)
        assert invalid.value.code == "validation_error"
        assert "max_answer_tokens" in invalid.value.message
        assert invalid.value.details and invalid.value.details[0]["field"] == "max_answer_tokens"
        with pytest.raises(NotFound):
            c.job("no-such-job")
        with pytest.raises(NotFound):
            c.wait("no-such-job", progress=False)


@pytest.mark.slow
def test_download_import_delete(url: str, tmp_path: Path) -> None:
    with Client(url) as c:
        weights = c.download("sentiment", version=1)
        assert isinstance(weights, bytes)
        written = c.download("sentiment", tmp_path, version=1)
        assert written == tmp_path / "sentiment-v1.safetensors" and written.read_bytes() == weights
        copy = c.import_adapter("copy", written)  # a .safetensors file
        assert (copy.name, copy.version, copy.labels) == ("copy", 1, ["neg", "pos"])
        assert c.predict("copy", "x").predictions == c.predict("sentiment", "x", 1).predictions
        assert c.import_adapter("copy", weights).version == 2  # bytes as they are

        for name, library in (("hub", "adapterhub"), ("lora", "peft")):
            archive = c.download(name, tmp_path / f"{library}.zip", format=library)
            assert isinstance(archive, Path)
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp_path / library)
            [folder] = (tmp_path / library).iterdir()
            imported = c.import_adapter(f"from-{library}", folder)  # a directory, zipped here
            assert imported.source["library"] == library
            assert c.import_adapter(f"from-{library}", archive.read_bytes()).version == 2
            assert (c.predict(f"from-{library}", "x").predictions[0].model_dump()["label"]
                    == c.predict(name, "x").predictions[0].model_dump()["label"])

        assert c.delete("copy", version=1).deleted_versions == [1]
        assert c.delete("copy").deleted_versions == [2]
        with pytest.raises(NotFound):
            c.adapter("copy")


@pytest.mark.slow
def test_train_wait_jobs_cancel(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(64, seed=1)))
    with Client(url) as c:
        job = c.train("senti", "classification", sentiment_rows(64), config=QUICK)
        assert job.status in ("queued", "running")
        done = job.wait(progress=True)  # stderr is not a terminal here: silent
        assert done.status == "succeeded" and done.adapter and done.adapter.version == 1
        assert len(done.metrics) == QUICK["epochs"] and done.progress
        shown = capsys.readouterr().err  # the server's logs only: no bar, no epoch lines
        assert "epoch 1/3" not in shown and "step/s" not in shown
        assert c.predict("senti", "x").version == 1

        from_file = c.train("senti", "classification", path=rows, config=QUICK,
                            labels=["neg", "pos"], description="from a file").wait(False)
        assert from_file.train_rows > 0 and from_file.adapter and from_file.adapter.version == 2

        slow = c.train("slow", "classification", sentiment_rows(64), config=SLOW)
        assert c.cancel(slow.job_id).cancel_requested or c.job(slow.job_id).status == "cancelled"
        with pytest.raises(JobFailed) as failed:
            slow.wait(progress=False, timeout=120)
        assert failed.value.job.status == "cancelled"

        assert {j.job_id for j in c.jobs(status="succeeded")} == {job.job_id, from_file.job_id}
        assert [j.job_id for j in c.jobs(limit=1)] == [slow.job_id]
        with pytest.raises(ValueError, match="either rows or path"):
            c.train("x", "classification")


@pytest.mark.slow
def test_async_client_predicts_and_waits(url: str) -> None:
    async def use() -> None:
        async with AsyncClient(url) as c:
            answer = await c.predict("sentiment", ["a", "b"])
            assert answer.version == 2 and len(answer.predictions) == 2
            job = await c.train("async", "classification", sentiment_rows(64), config=QUICK)
            done = await job.wait(progress=False)
            assert done.status == "succeeded" and done.adapter and done.adapter.version == 1
            assert [j.job_id for j in await c.jobs()] == [job.job_id]
            assert [a.name async for a in c.iter_adapters(prefix="a")] == ["async"]
            assert [a.name for a in (await c.adapters(contains="syn")).adapters] == ["async"]
            assert (await c.whoami()).scope == "admin"
            assert len((await c.task_types()).task_types) >= 5
            with pytest.raises(NotFound) as missing:
                await c.adapter("nobody")
            assert missing.value.request_id

    asyncio.run(use())


@pytest.mark.slow
def test_cli_jobs_and_predict(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["predict", "sentiment", "a fine film", "dull", "--url", url]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["task"] == "sentiment" and len(answer["predictions"]) == 2
    assert cli.main(["predict", "sentiment", "a fine film", "--url", url, "--explain",
                     "--explain-steps", "4", "--explain-label", "neg"]) == 0
    (explained,) = json.loads(capsys.readouterr().out)["predictions"]
    assert [w["text"] for w in explained["attributions"]] == ["a", "fine", "film"]
    assert explained["explanation"]["label"] == "neg" and explained["explanation"]["steps"] >= 4
    assert cli.main(["jobs", "--url", url, "--status", "running"]) == 0
    assert json.loads(capsys.readouterr().out) == {"jobs": []}
    assert cli.main(["predict", "nobody", "x", "--url", url]) == 1
    assert "404 adapter_not_found" in capsys.readouterr().err


# ------------------------------------------------------------------------ progress display
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_display_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    assert isinstance(display(stream=Terminal()), Bar)
    assert isinstance(display(stream=io.StringIO()), Silent)
    assert isinstance(display(lines=True, stream=io.StringIO()), Lines)
    assert isinstance(display(enabled=False, stream=Terminal()), Silent)

    screen = Terminal()
    bar = display(stream=screen)
    for step in range(1, 5):
        bar.step((step + 1) // 2, 2, step, 4, 0.5 / step)
    bar.epoch({"epoch": 2, "train_loss": 0.25, "accuracy": 0.75}, 2)
    bar.close()
    shown = screen.getvalue()
    assert "epoch 2/2" in shown and "4/4" in shown and "loss=0.1250" in shown
    assert "epoch 2/2 train_loss=0.2500 accuracy=0.7500" in shown

    log = io.StringIO()
    lines = display(lines=True, stream=log)
    lines.step(1, 2, 1, 4, 0.5)
    lines.epoch({"epoch": 1, "train_loss": 0.5, "accuracy": 0.5, "f1": 0.4}, 2)
    assert log.getvalue() == "epoch 1/2 train_loss=0.5000 accuracy=0.5000 f1=0.4000\n"


def _view(status: str, step: int, metrics: list[dict[str, float]], error: str | None = None
          ) -> str:
    progress = {"epoch": len(metrics) + 1, "epochs": 2, "step": step, "total_steps": 4,
                "train_loss": 0.5}
    return JobView(job_id="j", name="n", task_type="classification", status=status,  # type: ignore[arg-type]
                   progress=progress, metrics=metrics, error=error,
                   created_at="now").model_dump_json()


def test_follower_shows_the_stream_and_raises_the_jobs_error() -> None:
    """What wait() does with each line of GET /jobs/{id}/events, bar on a terminal."""
    screen = Terminal()
    follower = Follower(display(stream=screen), timeout=None)
    record = {"epoch": 1, "train_loss": 0.5, "accuracy": 0.75}
    for line in ["event: progress", f"data: {_view('running', 2, [record])}", "",
                 ": keep-alive", "", "event: progress",
                 f"data: {_view('failed', 3, [record], 'out of memory')}", "",
                 "event: end", 'data: {"status": "failed"}', ""]:
        follower.feed(line)
    follower.show.close()
    assert follower.ended
    assert "epoch 1/2 train_loss=0.5000 accuracy=0.7500" in screen.getvalue()
    assert "3/4" in screen.getvalue()
    with pytest.raises(JobFailed, match="j \\(n\\) failed: out of memory") as failed:
        follower.result()
    assert failed.value.job.error == "out of memory"


def test_cli_train_prints_a_line_per_epoch_off_a_terminal(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(32)))
    monkeypatch.setenv("BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ADAPTERS_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("TRAIN_THREADS", "1")
    get_settings.cache_clear()
    try:
        assert cli.main(["train", "--name", "cli", "--data", str(rows),
                         "--config-json", json.dumps({**QUICK, "epochs": 2})]) == 0
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("train_loss=" in line and "accuracy=" in line for line in epochs)
    assert json.loads(out)["version"] == 1


def test_bearer_key_and_errors_without_the_api_body() -> None:
    """The key goes as a Bearer header; an answer that is not the API's (a proxy's 502 page)
    is still an AdapterServeError with its status."""
    seen: list[httpx.Request] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(502, text="<html>bad gateway</html>",
                              headers={"X-Request-ID": "r1"})

    http = httpx.Client(**http_options("http://server", "k3y", 5),
                        transport=httpx.MockTransport(proxy))
    with Client(http=http) as c, pytest.raises(ServerError) as failed:
        c.health()
    assert seen[0].headers["Authorization"] == "Bearer k3y"
    assert (failed.value.status, failed.value.code, failed.value.request_id) == (
        502, "http_error", "r1")
    assert "bad gateway" in failed.value.message


def test_wait_gives_up_at_its_timeout() -> None:
    follower = Follower(Silent(), timeout=0)
    with pytest.raises(TimeoutError, match="job not over"):
        follower.feed(": keep-alive")
