"""A Python client for gpufleet: submit GenerationJobs, follow them, fetch their artifacts.

Light on purpose (Kubernetes client, pydantic, boto3 for artifacts): installs with
``pip install 'gpufleet[client]'`` and never imports the operator's dependencies.
"""

from gpufleet.client.aio import AsyncClient
from gpufleet.client.errors import (
    ChecksumError,
    ClientError,
    ForbiddenError,
    InvalidError,
    ManifestError,
    NotFoundError,
    S3Error,
)
from gpufleet.client.jobs import Client, finished, stalled, succeeded

__all__ = [
    "AsyncClient",
    "ChecksumError",
    "Client",
    "ClientError",
    "ForbiddenError",
    "InvalidError",
    "ManifestError",
    "NotFoundError",
    "S3Error",
    "finished",
    "stalled",
    "succeeded",
]
