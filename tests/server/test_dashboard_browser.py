"""The web dashboard in a real browser: Chromium (Debian's, driven by Playwright) against a real
Uvicorn server with its job worker training a tiny model.

One browser and one server for the module; each test opens its own browser context (its own
sessionStorage), signs in, and leaves a full-page screenshot in `test-artifacts/dashboard/`.
Every test fails if the page raised a JavaScript error, broke the Content-Security-Policy or
opened a dialog.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.server.conftest import (
    RunningServer,
    keys_file,
    settings_for,
    start_server,
    stop_server,
    wait_for_file,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking switches Chromium keeps calling Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# `TUNEFORGE_DOCS_SCREENSHOT=1` also writes the README's picture of a job page.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
KEY, OTHER_KEY = "sk-org-a", "sk-org-b"
# A reply and a dataset line that would run script if the page ever parsed them as HTML.
HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
PROMPT = "Show me the tag."
TIMEOUT_MS = 60_000


def _chat_line(user: str, assistant: str) -> str:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json.dumps({"messages": messages})


def hostile_chats(n: int = 16) -> str:
    """Chats whose answer is `HOSTILE`: the fine-tune learns to reply with it."""
    return "".join(_chat_line(PROMPT, HOSTILE) + "\n" for _ in range(n))


def dirty_chats() -> str:
    """Twelve chats with a broken line 2, a bad role on line 5 and a duplicate on line 9."""
    lines = [_chat_line(f"Question {i}?", f"Answer number {i}.") for i in range(12)]
    lines[1] = '{"messages": [{"role": "user", "content": "' + HOSTILE.replace('"', "'") + '"}'
    lines[4] = json.dumps({"messages": [{"role": "robot", "content": HOSTILE}]})
    lines[8] = lines[7]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dash(model_store, tmp_path_factory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = settings_for(
        model_store,
        tmp / "data",
        api_keys_file=keys_file(tmp),
        worker=True,
        worker_lease_s=3,
        max_tokens_cap=256,
    )
    running = start_server(settings)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `bash scripts/install.sh --dev` installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def api(dash) -> Iterator[OpenAI]:
    with OpenAI(base_url=dash.v1, api_key=KEY, max_retries=0, timeout=60) as client:
        yield client


class Page:
    """A browser tab on the dashboard, with what it raised."""

    def __init__(self, page: Any, url: str) -> None:
        self.page, self.url = page, url
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, msg: Any) -> None:
        # A 4xx the page asked for is logged as a failed resource; anything else is a problem.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {msg.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def sign_in(self, key: str = KEY) -> None:
        self.page.goto(self.url + "/")
        self.page.fill("#api-key", key)
        self.page.click("#signin button[type=submit]")
        # Signed in once the jobs list has loaded (its placeholder says "Loading…" until then).
        self.page.wait_for_selector("#jobs:not(:has-text('Loading…'))")

    def shot(self, name: str) -> None:
        """A screenshot of the page now, among the test artifacts."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()


@pytest.fixture
def tab(browser, dash, request) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = Page(context.new_page(), dash.url)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    flag = page.page.evaluate("() => window.__xss === undefined")
    context.close()
    assert flag, "script from user data ran"
    assert page.dialogs == [] and page.problems == []


# Filled by the journey test; the tests after it use its fine-tune (or train one if run alone).
TRAINED: dict[str, str] = {}


def _wait_job(api: OpenAI, job_id: str, statuses: set[str], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert job.status != "failed", job.error
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {statuses}")


def _hostile_method(max_steps: int | None = None) -> dict[str, Any]:
    tuneforge: dict[str, Any] = {"method": "full"}
    if max_steps:
        tuneforge["optim"] = {"max_steps": max_steps}
    hyper = {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper, "tuneforge": tuneforge}}


@pytest.fixture
def finetune(api) -> str:
    """The fine-tune that replies `HOSTILE` (trained by the journey test, else here)."""
    if "model" not in TRAINED:
        f = api.files.create(file=("hostile.jsonl", hostile_chats().encode()), purpose="fine-tune")
        wait_for_file(api, f.id)
        job = api.fine_tuning.jobs.create(
            model="tiny-llama", training_file=f.id, method=_hostile_method()
        )
        TRAINED["model"] = _wait_job(api, job.id, {"succeeded"}).fine_tuned_model
    return TRAINED["model"]


def _upload(tab: Page, name: str, text: str) -> None:
    tab.page.goto(tab.url + "/#/new")
    tab.page.set_input_files(
        "#upload-file",
        files=[{"name": name, "mimeType": "application/jsonl", "buffer": text.encode()}],
    )
    tab.page.click("#upload-button")
    tab.page.wait_for_selector("#report")


def _column(tab: Page, table: str, index: int) -> list[str]:
    return tab.page.locator(f"{table} tbody tr td:nth-child({index})").all_inner_texts()


def test_sign_in_keeps_the_key_in_the_tab_and_sends_no_cookie(tab):
    response = tab.page.goto(tab.url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    tab.page.fill("#api-key", "sk-not-a-key")
    tab.page.click("#signin button[type=submit]")
    tab.page.wait_for_selector("#signin-error:not(:empty)")
    assert "Incorrect API key" in tab.text("#signin-error")
    assert tab.page.locator("#nav").is_hidden()

    tab.sign_in()
    assert tab.page.evaluate("() => sessionStorage.getItem('tuneforge.api_key')") == KEY
    assert tab.page.context.cookies() == []
    assert "No jobs yet" in tab.text("#jobs") or tab.page.locator("#jobs-table").count() == 1
    tab.page.click("#signout")
    tab.page.wait_for_selector("#signin")
    assert tab.page.evaluate("() => sessionStorage.getItem('tuneforge.api_key')") is None


def test_a_dirty_file_shows_its_problems_by_line_and_what_cleaning_would_do(tab, tmp_path):
    from tuneforge.data.clean import clean

    tab.sign_in()
    _upload(tab, "dirty.jsonl", dirty_chats())
    tab.page.wait_for_selector("#problems-table")
    assert "error" in tab.text("#report h2")
    lines = _column(tab, "#problems-table", 1)
    assert "2" in lines and "5" in lines
    row5 = tab.page.locator("#problems-table tbody tr", has_text="robot").first
    assert row5.locator("td").first.inner_text() == "5"

    tab.page.click("#clean-button")
    tab.page.wait_for_selector("#clean-counts")
    source = tmp_path / "dirty.jsonl"
    source.write_text(dirty_chats())
    expected = clean(source, tmp_path / "clean.jsonl")  # what `tuneforge data clean` does
    assert expected.rejected >= 3
    counts = tab.text("#clean-counts")
    assert f"Read {expected.read}: keep {expected.kept}, reject {expected.rejected}" in counts
    rejected = _column(tab, "#clean-rejects", 1)
    assert {"2", "5", "9"} <= set(rejected)
    # The hostile line is shown as text, as it is in the file.
    raw = tab.page.locator("#clean-rejects tbody tr", has_text="robot").locator("code").inner_text()
    assert HOSTILE in json.loads(raw)["messages"][0]["content"]
    assert tab.page.locator("#clean img, #report img, #clean script").count() == 0


def test_start_a_job_watch_its_curves_grow_and_it_succeed(tab, api):
    tab.sign_in()
    _upload(tab, "hostile.jsonl", hostile_chats())
    tab.page.wait_for_selector("#report h2 >> text=processed")
    tab.page.select_option("#base-model", "tiny-llama")
    tab.page.select_option("#method", "full")
    # The same file for validation: the valid loss curve gets a point every eval.
    tab.page.select_option("#validation-file", tab.page.input_value("#training-file"))
    tab.page.fill("#batch-size", "4")
    tab.page.fill("#lr-multiplier", "10")

    # The API's validation, shown next to the field it names.
    jobs_before = len(api.fine_tuning.jobs.list().data)
    tab.page.fill("#n-epochs", "0")
    tab.page.click("#start-job")
    epochs_error = '[data-error-for="method.supervised.hyperparameters.n_epochs"]'
    tab.page.wait_for_selector(f"{epochs_error}:not(:empty)")
    assert "n_epochs" in tab.text(epochs_error)
    assert len(api.fine_tuning.jobs.list().data) == jobs_before  # nothing was created

    tab.page.fill("#n-epochs", "8")
    tab.page.click("#start-job")
    tab.page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = tab.page.url.rsplit("/", 1)[-1]

    # The loss curve grows while the job runs, one point per step.
    seen: set[int] = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        seen.add(int(tab.page.get_attribute("#chart-loss", "data-points")))
        if "succeeded" in tab.text("#job-status"):
            break
        assert "failed" not in tab.text("#job-status")
        time.sleep(0.1)
    job = api.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded"
    total = job.model_extra["tuneforge"]["total_steps"]
    tab.page.wait_for_selector(f'#chart-loss[data-points="{total}"]')
    assert len(seen - {0, total}) >= 1, f"the curve never showed a partial run: {sorted(seen)}"
    train_points, valid_points = tab.page.get_attribute("#chart-loss", "data-series").split(",")
    assert int(train_points) == total and 1 <= int(valid_points) < total
    for chart in ("#chart-lr", "#chart-speed", "#chart-params"):
        assert tab.page.get_attribute(chart, "data-points") == str(total)
    assert "successfully completed" in tab.text("#events")
    assert tab.text("#job-model") == job.fine_tuned_model
    steps = _column(tab, "#checkpoints-table", 1)
    checkpoints = api.fine_tuning.jobs.checkpoints.list(job_id).data
    assert steps == [str(c.step_number) for c in checkpoints] and steps
    assert "n_epochs" in tab.text("#settings-table") and '"full"' in tab.text("#settings-table")
    assert tab.page.is_disabled("#cancel-job") and tab.page.is_disabled("#resume-job")
    TRAINED["model"] = job.fine_tuned_model
    if os.environ.get("TUNEFORGE_DOCS_SCREENSHOT"):
        tab.page.screenshot(path=str(DOCS_SCREENSHOT), full_page=False)


def test_models_page_shows_the_lineage_and_the_report_in_the_page(tab, dash, finetune, tmp_path):
    from tuneforge.evaluation.run import EvalSettings, run_eval

    folder = dash.app.state.registry.resolve(finetune, "org-a").path
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text(hostile_chats(4))
    run_eval(folder, holdout, settings=EvalSettings(n_boot=100, max_new_tokens=24, device="cpu"))
    served = httpx.get(
        f"{dash.v1}/dashboard/models/{finetune}/report", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert served.status_code == 200 and "sandbox" in served.headers["content-security-policy"]
    assert str(folder) in (folder / "eval" / "report.html").read_text()
    assert str(folder) not in served.text and str(tmp_path) not in served.text  # no server path
    assert "…/holdout.jsonl" in served.text and "data:image/png;base64," in served.text
    assert httpx.get(f"{dash.v1}/dashboard/models/{finetune}/report").status_code == 401

    tab.sign_in()
    tab.page.goto(tab.url + "/#/models")
    base = tab.page.locator('#model-tree li[data-model="tiny-llama"]')
    base.wait_for()
    tuned = base.locator(f'li[data-model="{finetune}"]')
    assert tuned.get_attribute("class") == "kind-fine-tune"
    assert tuned.locator("li.kind-checkpoint").count() >= 1  # its checkpoints, under it
    # An adapter of the model store is a model of its own (no job made it).
    assert tab.page.locator('#model-tree > ul > li[data-model="acme/support:v1"]').count() == 1

    tuned.locator(".report-button").first.click()
    tab.page.wait_for_selector("#model-report .report table")
    report = tab.text("#model-report")
    assert finetune in report and "Evaluation" in report
    assert tab.page.locator("#model-report script, #model-report [onerror]").count() == 0
    tab.shot("models-report")

    tuned.locator(".export-button").first.click()
    assert f"tuneforge models export '{finetune}' --out" in tab.text("#export-command")

    # A model without a report says so.
    base.locator(".report-button").first.click()
    tab.page.wait_for_selector("#model-report >> text=has no evaluation report")


def test_playground_streams_two_models_side_by_side(tab, api, finetune):
    tab.sign_in()
    tab.page.goto(tab.url + "/#/playground?models=" + finetune)
    tab.page.wait_for_selector("#model-1 option[value='tiny-llama']", state="attached")
    assert tab.page.input_value("#model-0") == finetune
    assert tab.page.input_value("#model-1") == "tiny-llama"
    tab.page.fill("#system-prompt", "You are terse.")
    tab.page.fill("#prompt", PROMPT)
    tab.page.fill("#temperature", "0")
    tab.page.fill("#max-tokens", "40")
    tab.page.click("#send")
    tab.page.wait_for_selector("#reply-0[data-done='true']")
    tab.page.wait_for_selector("#reply-1[data-done='true']")

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": PROMPT},
    ]
    for i, model in enumerate([finetune, "tiny-llama"]):
        expected = api.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=40
        )
        shown = tab.page.locator(f"#reply-{i} .reply-text").inner_text()
        assert shown == expected.choices[0].message.content
        stats = tab.text(f"#reply-{i} .reply-stats")
        tokens = expected.usage.completion_tokens
        assert f"{tokens} tokens in" in stats and "tokens/s" in stats
        assert f"{len(shown)} characters" in stats
    assert (
        tab.page.locator("#reply-0 .reply-text").inner_text()
        != tab.page.locator("#reply-1 .reply-text").inner_text()
    )


def test_hostile_reply_and_dataset_line_are_shown_as_text_and_never_run(tab, finetune):
    tab.sign_in()
    # A job name, a file name and a reply with markup in them.
    _upload(tab, HOSTILE + ".jsonl", dirty_chats())
    tab.page.wait_for_selector("#problems-table")
    assert "<img src=x onerror=" in tab.text("#report-file")  # the name as the server keeps it
    tab.page.goto(tab.url + "/#/playground?models=" + finetune)
    tab.page.wait_for_selector(f"#model-0 option[value='{finetune}']", state="attached")
    tab.page.fill("#prompt", PROMPT)
    tab.page.fill("#temperature", "0")
    tab.page.fill("#max-tokens", "60")
    tab.page.click("#send")
    tab.page.wait_for_selector("#reply-0[data-done='true']")
    reply = tab.page.locator("#reply-0 .reply-text").inner_text()
    # The fine-tune learned to answer with markup (tags, maybe garbled: each would be an
    # element if parsed as HTML); it is on the page literally, as text, with no element.
    assert re.search(r"<[a-z/]", reply), reply
    assert tab.page.locator("#reply-0 .reply-text *").count() == 0
    assert tab.page.locator("#replies script, #replies img, #report img").count() == 0
    tab.page.wait_for_timeout(300)  # an onerror would have fired by now
    assert tab.page.evaluate("() => window.__xss") is None


def test_pause_resume_and_cancel_a_job_from_its_page(tab, api):
    f = api.files.create(file=("long.jsonl", hostile_chats().encode()), purpose="fine-tune")
    wait_for_file(api, f.id)
    tab.sign_in()
    tab.page.goto(tab.url + "/#/new")
    tab.page.wait_for_selector(f"#training-file option[value='{f.id}']", state="attached")
    tab.page.select_option("#training-file", f.id)
    tab.page.select_option("#method", "gradual")
    tab.page.fill("#unfreeze-every", "2")
    tab.page.fill("#n-epochs", "100")
    tab.page.fill("#batch-size", "1")
    tab.page.fill("#max-steps", "1000")
    tab.page.click("#start-job")
    tab.page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = tab.page.url.rsplit("/", 1)[-1]
    sent = httpx.get(
        f"{tab.url}/v1/fine_tuning/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}
    ).json()["method"]["supervised"]["tuneforge"]
    assert sent == {"method": "full", "unfreeze": {"every": 2}, "optim": {"max_steps": 1000}}
    tab.page.wait_for_selector("#job-head >> text=gradual unfreezing")

    # Pause, resume, then cancel it, with its buttons.
    tab.page.wait_for_selector("#job-status >> text=running", timeout=120_000)
    tab.page.click("#pause-job")
    tab.page.wait_for_selector("#job-status >> text=paused", timeout=120_000)
    assert tab.page.is_enabled("#resume-job") and tab.page.is_disabled("#pause-job")
    tab.page.click("#resume-job")
    tab.page.wait_for_selector("#resume-job:disabled")  # queued again, from its checkpoint
    assert api.fine_tuning.jobs.retrieve(job_id).status in ("queued", "running")
    tab.page.click("#cancel-job")
    tab.page.wait_for_selector("#job-status >> text=cancelled", timeout=120_000)
    job = api.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "cancelled"
    assert tab.page.is_disabled("#cancel-job")

    # The jobs list shows both jobs with their status.
    tab.page.goto(tab.url + "/#/jobs")
    tab.page.wait_for_selector(f"#jobs-table a[href='#/jobs/{job.id}']")
    row = tab.page.locator("#jobs-table tbody tr", has_text=job.id)
    assert "cancelled" in row.inner_text()


def test_another_organization_sees_none_of_it(tab, api):
    jobs = api.fine_tuning.jobs.list().data
    assert jobs  # org-a has jobs by now
    tab.sign_in(OTHER_KEY)
    assert "No jobs yet" in tab.text("#jobs")
    tab.page.goto(tab.url + "/#/jobs/" + jobs[0].id)
    tab.page.wait_for_selector("#job-head .error")
    assert "No such fine-tuning job" in tab.text("#job-head")
