"""Artifacts in S3: download with sha256 verification, and presigned URLs.

Credentials and endpoint come from the arguments or, as for every AWS tool, from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_REGION (or a profile).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from gpufleet.api.models import Artifact, GenerationJob
from gpufleet.client.errors import ChecksumError, ClientError, S3Error

CHUNK_BYTES = 1 << 20
NO_CREDENTIALS = (
    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
    "or pass --s3-access-key-id and --s3-secret-access-key"
)


@dataclass(frozen=True)
class S3Settings:
    """Where the artifacts' bucket is and how to sign in; None means the AWS default."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key) of s3://bucket/key."""
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise S3Error(f"{url}: not an s3://bucket/key URL")
    bucket, key = url[5:].split("/", 1)
    return bucket, key


def s3_client(settings: S3Settings) -> Any:
    key_id, secret = settings.access_key_id, settings.secret_access_key
    if (key_id is None) != (secret is None):  # one given as a flag: the other from the variables
        key_id = key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = secret or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not (key_id and secret):
            raise S3Error(
                "an S3 access key id needs its secret: give both --s3-access-key-id and "
                "--s3-secret-access-key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
    session = boto3.session.Session(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=settings.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
    )
    if session.get_credentials() is None:
        raise S3Error(NO_CREDENTIALS)
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,  # None: boto3 reads AWS_ENDPOINT_URL(_S3)
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def _artifact(job: GenerationJob, name: str) -> Artifact:
    for artifact in job.status.artifacts:
        if artifact.name == name:
            return artifact
    names = ", ".join(a.name for a in job.status.artifacts) or "none"
    raise ClientError(f"job {job.metadata.get('name')!r} has no artifact {name!r} (it has: {names})")


def _s3_failure(exc: Exception, url: str) -> S3Error:
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return S3Error(NO_CREDENTIALS)
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return S3Error(f"{url}: S3 refused the credentials ({code}); check AWS_ACCESS_KEY_ID and the key")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            return S3Error(f"{url}: not in the bucket ({code})")
        return S3Error(f"{url}: S3 error {code}: {exc}")
    return S3Error(f"{url}: {exc}")


def download(job: GenerationJob, directory: Path, settings: S3Settings) -> list[Path]:
    """Each artifact of ``job`` into ``directory``, verified against its recorded sha256.

    A file is written under a temporary name and renamed only once its digest matched, so a
    corrupt or partial download never looks like an artifact.
    """
    if not job.status.artifacts:
        phase = job.status.phase.value if job.status.phase else "not started"
        raise ClientError(f"job {job.metadata.get('name')!r} has no artifacts (phase: {phase})")
    s3 = s3_client(settings)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for artifact in job.status.artifacts:
        bucket, key = split_s3_url(artifact.url)
        target = directory / artifact.name
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{artifact.name}.", delete=False) as out:
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                Path(out.name).unlink()
                raise _s3_failure(exc, artifact.url) from exc
        if digest.hexdigest() != artifact.sha256:
            Path(out.name).unlink()
            raise ChecksumError(
                f"{artifact.url}: sha256 {digest.hexdigest()} differs from the job's record "
                f"{artifact.sha256}; the object changed after the job wrote it (not saved)"
            )
        Path(out.name).replace(target)
        written.append(target)
    return written


def presigned_url(job: GenerationJob, name: str, settings: S3Settings, expires_seconds: int = 3600) -> str:
    """A URL anyone can GET the artifact from until it expires; checks that the object exists."""
    artifact = _artifact(job, name)
    bucket, key = split_s3_url(artifact.url)
    s3 = s3_client(settings)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _s3_failure(exc, artifact.url) from exc
    return str(
        s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_seconds
        )
    )
