"""Fuzzing the running worker from its own OpenAPI schema: no input makes it answer 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gpufleet_worker.protocol import AUTH_HEADER, auth_header_value
from gpufleet_worker.server import openapi_schema

pytestmark = [pytest.mark.s3, pytest.mark.slow]

schema = schemathesis.openapi.from_dict(openapi_schema())
# Valid requests and deliberately invalid ones (wrong types, out-of-range values, bad ids).
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module")
def fuzz_worker(start_worker: Any) -> Any:
    # One job slot: whatever a fuzzed submission admits cannot crowd out the rest of the suite.
    return start_worker(
        {
            "name": "worker-fuzz",
            "maxJobsPerGpu": 1,
            "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "256Mi"}],
            "simulatedGpu": {"memory": "2Gi"},
        }
    )


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_request_gets_a_server_error(case: Any, fuzz_worker: Any) -> None:
    case.call_and_validate(
        base_url=fuzz_worker.base_url,
        headers={AUTH_HEADER: auth_header_value(fuzz_worker.token)},
        checks=[not_a_server_error],
        timeout=30,
    )
