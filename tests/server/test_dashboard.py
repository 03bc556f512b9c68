"""The dashboard's serving and its two JSON views, over HTTP (the browser tests drive the page
itself: test_dashboard_browser.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.server.conftest import (
    API_KEY,
    RunningServer,
    call_without_5xx,
    fuzzed_api,
    keys_file,
    settings_for,
    start_server,
    stop_server,
)
from tuneforge.server.dashboard import STATIC_DIR

HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def test_the_page_and_its_modules_are_served_with_a_strict_policy(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="/ui/app.js"' in page.text

    module = httpx.get(server.url + "/ui/app.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert module.headers["content-security-policy"] == page.headers["content-security-policy"]
    assert httpx.get(server.url + "/ui/vendor/uplot/LICENSE").status_code == 200
    assert httpx.get(server.url + "/ui/../dashboard.py").status_code == 404
    assert httpx.get(server.url + "/ui/nothing.js").status_code == 404
    # The files are public; the data is not.
    assert httpx.get(server.v1 + "/fine_tuning/jobs").status_code == 401


def test_a_foreign_host_gets_nothing_from_the_dashboard(server):
    for path in ("/", "/ui/app.js"):
        r = httpx.get(server.url + path, headers={"Host": "attacker.example"})
        assert r.status_code == 421 and r.json()["error"]["code"] == "invalid_host"


def test_the_pages_have_no_inline_script_or_style_and_never_parse_data_as_html():
    index = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", index)
    assert scripts and all("src=" in s for s in scripts)
    assert "<style" not in index and not re.search(r"\sstyle=", index)
    assert not re.search(r"\son[a-z]+=", index)
    for module in STATIC_DIR.glob("*.js"):
        code = module.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{module.name} uses {sink}"
        assert "new Function" not in code


@pytest.fixture(scope="module")
def two_orgs(model_store, tmp_path_factory) -> Iterator[RunningServer]:
    """A server with two organizations and no worker (the views need none)."""
    tmp = tmp_path_factory.mktemp("dashboard-api")
    running = start_server(
        settings_for(model_store, tmp / "data", api_keys_file=keys_file(tmp), worker=False)
    )
    yield running
    stop_server(running)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_clean_preview_counts_fixes_and_rejects_and_stays_in_its_organization(two_orgs):
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"  Question {i}?  "},
                    {"role": "assistant", "content": f"Answer {i}."},
                ]
            }
        )
        for i in range(10)
    ]
    lines[2] = '{"messages": [' + HOSTILE
    lines[6] = lines[5]
    body = ("\n".join(lines) + "\n").encode()
    up = httpx.post(
        two_orgs.v1 + "/files",
        headers=_auth("sk-org-a"),
        files={"file": ("dirty.jsonl", body)},
        data={"purpose": "fine-tune"},
    )
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    url = f"{two_orgs.v1}/dashboard/files/{file_id}/clean"

    assert httpx.post(url).status_code == 401
    other = httpx.post(url, headers=_auth("sk-org-b"))
    assert other.status_code == 404 and other.json()["error"]["type"] == "invalid_request_error"

    r = httpx.post(url, headers=_auth("sk-org-a"), timeout=60)
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["read"] == 10 and preview["balanced"] is True
    assert preview["kept"] + preview["rejected"] == 10 and preview["rejected"] >= 2
    assert {r["line"] for r in preview["rejected_lines"]} >= {3, 7}
    broken = next(r for r in preview["rejected_lines"] if r["line"] == 3)
    assert HOSTILE in broken["raw"]  # the line as it is: the page shows it as text
    assert preview["fixes"] and all(preview["fix_lines"][k] for k in preview["fixes"])
    assert str(two_orgs.settings.data_dir) not in r.text  # no server path
    assert "input" not in preview and "output" not in preview

    missing = httpx.post(
        f"{two_orgs.v1}/dashboard/files/file-nope/clean", headers=_auth("sk-org-a")
    )
    assert missing.status_code == 404


def test_a_model_report_needs_the_key_and_an_evaluation(two_orgs):
    url = two_orgs.v1 + "/dashboard/models/tiny-llama/report"
    assert httpx.get(url).status_code == 401
    none = httpx.get(url, headers=_auth("sk-org-a"))
    assert none.status_code == 404 and none.json()["error"]["code"] == "report_not_found"
    unknown = httpx.get(
        two_orgs.v1 + "/dashboard/models/ft:tiny-llama:org-b::x/report", headers=_auth("sk-org-a")
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


@pytest.fixture(scope="module")
def dashboard_schema(model_store, tmp_path_factory):
    yield from fuzzed_api(
        settings_for(model_store, tmp_path_factory.mktemp("data"), api_keys=[API_KEY], worker=False)
    )


schema = schemathesis.pytest.from_fixture("dashboard_schema").include(path_regex=r"^/v1/dashboard")


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_dashboard_views_never_answer_5xx(case):
    call_without_5xx(case)
