"""Property-based: schemathesis generates requests from the app's own OpenAPI document; none
may get a 5xx. Kept small (a few examples per operation) so the default run stays quick;
`-m slow` runs a longer search."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.server.conftest import API_KEY, start_server, stop_server
from tuneforge.server.settings import ServerSettings


@pytest.fixture(scope="module")
def api_schema(model_store, tmp_path_factory):
    """A server with tight caps, so generated requests finish fast."""
    running = start_server(
        ServerSettings(
            model_dir=model_store,
            base_model="tiny-llama",
            data_dir=tmp_path_factory.mktemp("data"),
            api_keys=[API_KEY],
            max_tokens_cap=8,
            default_max_tokens=8,
            max_n=2,
            max_queue=64,
            torch_threads=1,
        )
    )
    schema = schemathesis.openapi.from_url(
        running.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    # Fuzzing only (max_examples bounds it); the exhaustive coverage phase takes minutes here.
    schema.config.phases.coverage.enabled = False
    yield schema
    stop_server(running)


# The inference API; the fine-tuning routes are exercised by their own tests.
schema = schemathesis.pytest.from_fixture("api_schema").include(
    path_regex=r"^/(health|metrics|v1/(models|chat|completions))"
)


def _call(case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"}, checks=[not_a_server_error], timeout=60
    )


@schema.parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case):
    _call(case)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_long(case):
    _call(case)
