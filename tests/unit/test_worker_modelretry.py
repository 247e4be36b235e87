"""Which model failures the worker tries again (`gpufleet_worker.modelretry`), and when."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from gpufleet_worker.config import ModelRetryConfig
from gpufleet_worker.modelfiles import ModelSourceError, SourceProblem
from gpufleet_worker.modelretry import backoff_seconds, is_transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def from_store(cause: BaseException) -> ModelSourceError:
    """A ModelSourceError raised from an object store error, as sources.py raises it."""
    try:
        raise ModelSourceError("model m: s3://b/p: ...", SourceProblem.STORE) from cause
    except ModelSourceError as error:
        return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        # The store is unreachable, slow, throttling or failing: transient.
        (from_store(EndpointConnectionError(endpoint_url="http://s3:9000")), True),
        (from_store(ConnectTimeoutError(endpoint_url="http://s3:9000")), True),
        (from_store(ReadTimeoutError(endpoint_url="http://s3:9000")), True),
        (from_store(ResponseStreamingError(error="connection reset")), True),
        (from_store(ConnectionResetError("reset by peer")), True),
        (from_store(TimeoutError("timed out")), True),
        (from_store(client_error("InternalError", 500)), True),
        (from_store(client_error("ServiceUnavailable", 503)), True),
        (from_store(client_error("SlowDown", 503)), True),
        (from_store(client_error("", 502)), True),
        (from_store(client_error("TooManyRequests", 429)), True),
        (from_store(client_error("RequestTimeout", 400)), True),
        # Not there yet: weights are often published after the pool.
        (from_store(client_error("NoSuchBucket", 404)), True),
        (from_store(client_error("NoSuchKey", 404)), True),
        (ModelSourceError("no objects under the prefix", SourceProblem.EMPTY_PREFIX), True),
        (ModelSourceError("came to 3 bytes, listed as 5", SourceProblem.INCOMPLETE), True),
        (ModelSourceError("models in use fill the cache", SourceProblem.CACHE_FULL), True),
        # Refused or wrong: the same request fails the same way until the spec changes.
        (from_store(client_error("AccessDenied", 403)), False),
        (from_store(client_error("InvalidAccessKeyId", 403)), False),
        (from_store(client_error("SignatureDoesNotMatch", 403)), False),
        (from_store(NoCredentialsError()), False),
        (from_store(PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY")), False),
        (from_store(PermissionError("read-only file system")), False),
        (ModelSourceError("digest mismatch", SourceProblem.DIGEST_MISMATCH), False),
        (ModelSourceError("nothing at /models/sd", SourceProblem.NOT_FOUND), False),
        (ModelSourceError("unsupported source", SourceProblem.UNSUPPORTED), False),
        (ModelSourceError("object key '../x'", SourceProblem.BAD_OBJECT_KEY), False),
        (ModelSourceError("a store error without its cause", SourceProblem.STORE), False),
        # Anything the runtime raised while loading the files.
        (ValueError("models[m].tasks: the model cannot do segment"), False),
        (OSError("model_index.json: not a diffusers pipeline"), False),
        (RuntimeError("CUDA error: device-side assert"), False),
    ],
    ids=lambda value: value if isinstance(value, bool) else f"{type(value).__name__}:{value}"[:60],
)
def test_which_failures_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("failures", "wait"),
    [(1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 480.0), (6, 600.0), (7, 600.0), (10_000, 600.0)],
)
def test_the_backoff_doubles_from_the_first_wait_up_to_the_longest(failures: int, wait: float) -> None:
    defaults = ModelRetryConfig()
    assert backoff_seconds(failures, defaults.first_seconds, defaults.max_seconds) == wait


def test_the_backoff_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="failures must be >= 1, got 0"):
        backoff_seconds(0, 30, 600)


def test_the_retry_config_names_the_field_and_rule() -> None:
    with pytest.raises(
        ValueError, match=r"modelRetry.maxSeconds \(10.0\) must be >= modelRetry.firstSeconds"
    ):
        ModelRetryConfig.model_validate({"firstSeconds": 30, "maxSeconds": 10})
    with pytest.raises(ValueError, match="greater than 0"):
        ModelRetryConfig.model_validate({"firstSeconds": 0})
