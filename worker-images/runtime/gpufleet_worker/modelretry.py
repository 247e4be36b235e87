"""Which failures of a model are tried again, and when. Pure functions.

A model that fails to download or load is Failed, and jobs for it fail with the cause. A
*transient* cause may be gone a little later, so the worker tries the model's source again
after a growing backoff (`backoff_seconds`): the object store could not be reached, timed out,
throttled or answered with a server error; the bucket, the objects under the prefix or one
object being downloaded are not there (yet: weights are often published after the pool is
created); an object changed while it was downloaded; the disk cache is full of models in
use. A *permanent* cause is not tried again by this worker (its models are fixed when it
starts; workers started with a changed spec get the changed model): a digest mismatch, a
local path (``file://``, ``pvc://``) with nothing at it, an unsupported source, an object key
that would leave the model folder, credentials missing or refused, and anything the runtime
refused while loading the files.
"""

from __future__ import annotations

from .modelfiles import ModelSourceError, SourceProblem

TRANSIENT_PROBLEMS = frozenset(
    {SourceProblem.EMPTY_PREFIX, SourceProblem.INCOMPLETE, SourceProblem.CACHE_FULL}
)
# S3 error codes that describe the store's state now, not the request: worth trying again.
TRANSIENT_S3_CODES = frozenset(
    {
        "NoSuchBucket",
        "NoSuchKey",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "XMinioServerNotInitialized",
    }
)
MAX_DOUBLINGS = 64  # beyond this the longest wait has long been reached


def is_transient(error: BaseException) -> bool:
    """Whether the failure ``error`` (raised while fetching or loading a model) may pass."""
    if not isinstance(error, ModelSourceError):
        return False  # the runtime refused the files: the same files fail the same way
    if error.problem is SourceProblem.STORE:
        return _store_error_is_transient(error.__cause__)
    return error.problem in TRANSIENT_PROBLEMS


def _store_error_is_transient(cause: BaseException | None) -> bool:
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as EndpointError

    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code", "")
        status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in TRANSIENT_S3_CODES or status >= 500 or status == 429
    # Unreachable endpoints, timeouts, connections cut mid-body (credentials errors are not).
    return isinstance(
        cause, EndpointError | HTTPClientError | IncompleteReadError | ConnectionError | TimeoutError
    )


def backoff_seconds(failures: int, first_seconds: float, max_seconds: float) -> float:
    """The wait before the next try after ``failures`` (>= 1) transient failures in a row:
    ``first_seconds``, doubling each time, at most ``max_seconds``."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    return min(max_seconds, first_seconds * 2.0 ** min(failures - 1, MAX_DOUBLINGS))
