"""The local S3 server: real object round trips, and a stop that leaves nothing behind."""

from __future__ import annotations

import os
import socket

import pytest

from gpufleet.localcluster.s3server import S3Server

pytestmark = pytest.mark.s3


def test_put_and_get_an_object(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket("roundtrip")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"


def test_wrong_credentials_are_refused(s3_server: S3Server) -> None:
    import boto3
    from botocore.exceptions import ClientError

    bucket = s3_server.create_bucket("private")
    intruder = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(ClientError):
        intruder.list_objects_v2(Bucket=bucket)


def test_stop_leaves_no_process_port_or_data() -> None:
    server = S3Server().start()
    pid, port, data_dir = server.process.pid, server.port, server.data_dir
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert not data_dir.exists()
