"""Property-based: schemathesis fuzzes the files and fine-tuning routes from the app's own
OpenAPI document; none may answer 5xx. No worker runs, so nothing trains."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.server.conftest import API_KEY, start_server, stop_server
from tuneforge.server.settings import ServerSettings


@pytest.fixture(scope="module")
def ft_api_schema(model_store, tmp_path_factory):
    running = start_server(
        ServerSettings(
            model_dir=model_store,
            base_model="tiny-llama",
            data_dir=tmp_path_factory.mktemp("data"),
            api_keys=[API_KEY],
            max_upload_bytes=64 * 1024,
            torch_threads=1,
        )
    )
    schema = schemathesis.openapi.from_url(
        running.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    schema.config.phases.coverage.enabled = False
    yield schema
    stop_server(running)


schema = schemathesis.pytest.from_fixture("ft_api_schema").include(
    path_regex=r"^/v1/(files|fine_tuning)"
)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fine_tuning_routes_never_answer_5xx(case):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"}, checks=[not_a_server_error], timeout=60
    )


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fine_tuning_routes_never_answer_5xx_long(case):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"}, checks=[not_a_server_error], timeout=60
    )
