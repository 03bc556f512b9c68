"""Property-based: schemathesis fuzzes the files and fine-tuning routes from the app's own
OpenAPI document; none may answer 5xx. No worker runs, so nothing trains."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.server.conftest import API_KEY, call_without_5xx, fuzzed_api, settings_for


@pytest.fixture(scope="module")
def ft_api_schema(model_store, tmp_path_factory):
    yield from fuzzed_api(
        settings_for(
            model_store,
            tmp_path_factory.mktemp("data"),
            api_keys=[API_KEY],
            max_upload_bytes=64 * 1024,
        )
    )


schema = schemathesis.pytest.from_fixture("ft_api_schema").include(
    path_regex=r"^/v1/(files|fine_tuning)"
)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fine_tuning_routes_never_answer_5xx(case):
    call_without_5xx(case)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fine_tuning_routes_never_answer_5xx_long(case):
    call_without_5xx(case)
