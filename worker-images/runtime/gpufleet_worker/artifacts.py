"""Where outputs go: S3-compatible object storage, or a local folder for demos.

Every artifact is recorded with its URL, size, SHA-256 and media type, computed from the
exact bytes written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gpufleet.api.outputs import output_uri_problems

from .config import S3Config
from .protocol import Artifact

S3_PREFIX = "s3://"
FILE_PREFIX = "file://"


class UploadError(Exception):
    pass


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` as ("bucket", "some/key")."""
    if not uri.startswith(S3_PREFIX):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    return bucket, key


def make_s3_client(config: S3Config) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        # Path-style addressing works with every S3-compatible server, not only AWS.
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


class ArtifactStore:
    """Writes artifacts under an s3:// prefix, or a file:/// prefix inside ``local_root``."""

    def __init__(self, s3_client: Any, local_root: Path | None) -> None:
        self._s3 = s3_client
        self._local_root = local_root.resolve() if local_root else None

    def output_problem(self, output_uri: str) -> str | None:
        """Why this worker cannot write under ``output_uri``, or None."""
        if problems := output_uri_problems(output_uri):
            return "; ".join(f"outputUri: {problem}" for problem in problems)
        if output_uri.startswith(S3_PREFIX):
            return None
        if output_uri.startswith(FILE_PREFIX):
            if self._local_root is None:
                return "outputUri: file:/// outputs need the worker's localOutputRoot; use s3://"
            if not self._local_path(output_uri).is_relative_to(self._local_root):
                return f"outputUri: {output_uri!r} is outside the worker's localOutputRoot"
            return None
        return f"outputUri: {output_uri!r} must start with s3:// or file:///"

    def _local_path(self, uri: str) -> Path:
        return Path(os.path.normpath(unquote(urlsplit(uri).path)))

    def put(self, output_uri: str, name: str, data: bytes, media_type: str) -> Artifact:
        url = output_uri + name
        try:
            if url.startswith(S3_PREFIX):
                bucket, key = split_s3_uri(url)
                self._s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=media_type)
            else:
                if problem := self.output_problem(output_uri):
                    raise UploadError(problem)
                path = self._local_path(url)
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(data)
                partial.replace(path)  # readers never see half a file
        except UploadError:
            raise
        except Exception as error:  # boto3 raises many unrelated types; all mean "not written"
            raise UploadError(f"writing {url}: {error}") from error
        return Artifact(
            name=name,
            url=url,
            media_type=media_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def list_uris(self, prefix_uri: str) -> list[str]:
        """Every object under ``prefix_uri`` (s3:// or, inside the local root, file:///), sorted."""
        if prefix_uri.startswith(S3_PREFIX):
            bucket, prefix = split_s3_uri(prefix_uri)
            keys = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys += [item["Key"] for item in page.get("Contents", [])]
            return sorted(f"{S3_PREFIX}{bucket}/{key}" for key in keys)
        if problem := self.output_problem(prefix_uri):
            raise ValueError(problem)
        root = self._local_path(prefix_uri)
        files = sorted(path for path in root.rglob("*") if path.is_file()) if root.is_dir() else []
        return [f"{FILE_PREFIX}{path}" for path in files if not path.name.endswith(".partial")]

    def read(self, uri: str, max_bytes: int) -> bytes:
        """An object written under an output prefix (s3:// or file:///), refusing ones over ``max_bytes``."""
        if uri.startswith(S3_PREFIX):
            return self.read_object(uri, max_bytes)
        if problem := self.output_problem(uri.rsplit("/", 1)[0] + "/"):
            raise ValueError(problem)
        path = self._local_path(uri)
        if path.stat().st_size > max_bytes:
            raise ValueError(f"{uri}: {path.stat().st_size} bytes is over the limit of {max_bytes}")
        return path.read_bytes()

    def read_object(self, uri: str, max_bytes: int) -> bytes:
        """An input object ``s3://bucket/key``, refusing ones over ``max_bytes``."""
        bucket, key = split_s3_uri(uri)
        response = self._s3.get_object(Bucket=bucket, Key=key)
        if response["ContentLength"] > max_bytes:
            response["Body"].close()
            raise ValueError(f"{uri}: {response['ContentLength']} bytes is over the limit of {max_bytes}")
        return response["Body"].read()
