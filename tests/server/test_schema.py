"""Property-based: schemathesis generates requests from the app's own OpenAPI document; none
may get a 5xx. Kept small (a few examples per operation) so the default run stays quick;
`-m slow` runs a longer search."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.server.conftest import API_KEY, call_without_5xx, fuzzed_api, settings_for


@pytest.fixture(scope="module")
def api_schema(model_store, tmp_path_factory):
    """A server with tight caps, so generated requests finish fast."""
    yield from fuzzed_api(
        settings_for(
            model_store,
            tmp_path_factory.mktemp("data"),
            api_keys=[API_KEY],
            max_tokens_cap=8,
            default_max_tokens=8,
            max_n=2,
            max_queue=64,
        )
    )


# The inference API; the fine-tuning routes are exercised by their own tests.
schema = schemathesis.pytest.from_fixture("api_schema").include(
    path_regex=r"^/(health|metrics|v1/(models|chat|completions))"
)


@schema.parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case):
    call_without_5xx(case)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_long(case):
    call_without_5xx(case)
