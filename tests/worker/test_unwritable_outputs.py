"""Every output the API and the worker refuse as unwritable is one a real S3 server refuses,
and what they admit next to it is written."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from gpufleet.api.outputs import UNWRITABLE, output_uri_problems
from gpufleet.localcluster.s3server import S3Server
from gpufleet_worker.artifacts import ArtifactStore, UploadError

pytestmark = pytest.mark.s3

BUCKET = "outputs-rules"
# (refused, admitted) per rule, in the order of UNWRITABLE.
EXAMPLES = [
    ("s3://169.254.169.254/latest/", "s3://169-254-169-254/latest/"),
    ("s3://my..bucket/out/", "s3://my.bucket/out/"),
    (f"s3://{BUCKET}/studio/../other/", f"s3://{BUCKET}/studio/a..b/"),
]


def test_there_is_an_example_for_every_rule() -> None:
    assert len(EXAMPLES) == len(UNWRITABLE)
    for (refused, admitted), rule in zip(EXAMPLES, UNWRITABLE, strict=True):
        assert output_uri_problems(refused) == [rule.message]
        assert output_uri_problems(admitted) == []


@pytest.mark.parametrize(("refused", "admitted"), EXAMPLES)
def test_the_s3_server_refuses_what_the_rules_refuse(
    s3_server: S3Server, refused: str, admitted: str
) -> None:
    client = s3_server.client()
    store = ArtifactStore(client, None)
    for uri in (refused, admitted):
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as error:
                assert uri == refused, f"{bucket}: {error}"
                assert error.response["Error"]["Code"] == "InvalidBucketName"
                continue
        if uri == refused:
            with pytest.raises(UploadError):
                store.put(uri, "image-0.png", b"png", "image/png")
        else:
            assert store.put(uri, "image-0.png", b"png", "image/png").size_bytes == 3
