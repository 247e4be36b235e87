"""Model sources against a real S3 server (MinIO): download into the disk cache, verify,
evict, and every way a source can fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gpufleet.localcluster.s3server import S3Server
from gpufleet_worker.artifacts import make_s3_client
from gpufleet_worker.config import ModelSpec, S3Config
from gpufleet_worker.modelfiles import ModelSourceError
from gpufleet_worker.sources import PARTIAL_PREFIX, DiskModelFiles, local_digest, manifest_digest

BUCKET = "models"
MIB = 2**20


def s3_config(server: S3Server) -> S3Config:
    return S3Config(
        endpoint_url=server.endpoint,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
    )


@pytest.fixture(scope="module")
def s3(s3_server: S3Server):
    client = make_s3_client(s3_config(s3_server))
    client.create_bucket(Bucket=BUCKET)
    return client


def upload(s3, prefix: str, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{relative}", Body=data)


def spec(name: str, prefix: str, digest: str | None = None) -> ModelSpec:
    return ModelSpec(name=name, source=f"s3://{BUCKET}/{prefix}", vram="1Gi", digest=digest)


def files_of(size: int, seed: int) -> dict[str, bytes]:
    return {
        "model_index.json": b'{"_class_name": "Test"}',
        "unet/diffusion_pytorch_model.safetensors": bytes([seed % 256]) * size,
    }


def hashes(files: dict[str, bytes]) -> dict[str, str]:
    import hashlib

    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


def cache_of(s3, tmp_path: Path, capacity: int = 100 * MIB, loading=frozenset, **kw) -> DiskModelFiles:
    return DiskModelFiles(s3, tmp_path / "cache", capacity, loading=loading, **kw)


def test_an_s3_model_is_downloaded_whole_then_served_from_the_cache(s3, tmp_path: Path) -> None:
    files = files_of(3 * MIB, 1)
    upload(s3, "whole/sd", files)
    cache = cache_of(s3, tmp_path)
    model = spec("sd", "whole/sd", digest=manifest_digest(hashes(files)))
    assert cache.on_disk_bytes(model) is None  # a load would download it

    progress = Progress()
    local = cache.local(model, progress)

    folder = Path(local.source.removeprefix("file://"))
    assert local.source.startswith("file:///") and folder.parent == tmp_path / "cache"
    assert {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    } == files
    total = sum(len(d) for d in files.values())
    assert progress.calls[0] == (0, total) and progress.calls[-1] == (total, total)
    assert [done for done, _ in progress.calls] == sorted(done for done, _ in progress.calls)
    assert cache.on_disk_bytes(model) == total
    info = cache.cache_info()
    assert info is not None and info.used_bytes == total and info.capacity_bytes == 100 * MIB
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(PARTIAL_PREFIX)]

    again = Progress()
    assert cache.local(model, again) == local and again.calls == []  # no second download
    # A worker restarted on the same cache finds it there.
    assert cache_of(s3, tmp_path).on_disk_bytes(model) == total


def test_a_wrong_digest_fails_the_model_and_keeps_nothing(s3, tmp_path: Path) -> None:
    upload(s3, "tampered/sd", files_of(MIB, 2))
    cache = cache_of(s3, tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(
        ModelSourceError, match=r"model sd: s3://models/tampered/sd: digest mismatch.*sha256:0{64}"
    ):
        cache.local(spec("sd", "tampered/sd", digest=wrong), Progress())
    assert list((tmp_path / "cache").iterdir()) == []
    assert cache.cache_info().used_bytes == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        (
            f"s3://{BUCKET}/no/such/prefix",
            r"no objects under s3://models/no/such/prefix/ \(the prefix is empty",
        ),
        ("s3://no-such-bucket/sd", r"the bucket does not exist \(NoSuchBucket\)"),
    ],
)
def test_a_missing_source_names_the_model_and_the_cause(s3, tmp_path: Path, source: str, cause: str) -> None:
    cache = cache_of(s3, tmp_path)
    with pytest.raises(ModelSourceError, match=rf"^model ghost: {source}: {cause}"):
        cache.local(ModelSpec(name="ghost", source=source, vram="1Gi"), Progress())
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_unreachable_endpoint_is_reported(tmp_path: Path) -> None:
    from gpufleet.localcluster.processes import free_port

    client = make_s3_client(
        S3Config(endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="k", secret_access_key="s")
    )
    with pytest.raises(ModelSourceError, match=r"^model sd: s3://models/sd: S3 endpoint unreachable"):
        cache_of(client, tmp_path).local(spec("sd", "sd"), Progress())


def test_missing_credentials_are_reported(s3_server: S3Server, tmp_path: Path, monkeypatch) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    client = make_s3_client(S3Config(endpoint_url=s3_server.endpoint))
    with pytest.raises(ModelSourceError, match=r"^model sd: s3://models/sd: no S3 credentials"):
        cache_of(client, tmp_path).local(spec("sd", "sd"), Progress())


KILLED_MID_DOWNLOAD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from gpufleet_worker.artifacts import make_s3_client
    from gpufleet_worker.config import ModelSpec, S3Config
    from gpufleet_worker.sources import DiskModelFiles

    endpoint, key, secret, cache = sys.argv[1:]
    client = make_s3_client(S3Config(endpoint_url=endpoint, access_key_id=key, secret_access_key=secret))
    files = DiskModelFiles(client, Path(cache), 2**30)

    def die_after_the_first_chunk(done, total):
        if done > 0:
            os._exit(9)  # as abrupt as SIGKILL: nothing is cleaned up

    files.local(ModelSpec(name="sd", source="s3://models/killed/sd", vram="1Gi"), die_after_the_first_chunk)
    """
)


def test_a_worker_killed_mid_download_leaves_a_partial_folder_the_next_one_removes(
    s3_server: S3Server, s3, tmp_path: Path
) -> None:
    files = files_of(4 * MIB, 3)
    upload(s3, "killed/sd", files)
    cache_dir = tmp_path / "cache"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_MID_DOWNLOAD,
            s3_server.endpoint,
            s3_server.access_key,
            s3_server.secret_key,
            str(cache_dir),
        ],
        capture_output=True,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr.decode()
    leftovers = list(cache_dir.iterdir())
    assert [p.name.startswith(PARTIAL_PREFIX) for p in leftovers] == [True]  # half a model, set aside

    cache = DiskModelFiles(s3, cache_dir, 2**30)
    assert not leftovers[0].exists()  # removed when the replacement starts
    assert cache.cache_info().used_bytes == 0  # type: ignore[union-attr]
    local = cache.local(ModelSpec(name="sd", source="s3://models/killed/sd", vram="1Gi"), Progress())
    assert local_digest(Path(local.source.removeprefix("file://"))) == manifest_digest(hashes(files))


def test_the_disk_cache_evicts_the_least_recently_used_idle_model(s3, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        upload(s3, f"lru/{name}", files_of(2 * MIB, ord(name)))
    size = 2 * MIB + len(b'{"_class_name": "Test"}')
    clock = iter(range(100))
    loading: set[str] = set()
    cache = cache_of(s3, tmp_path, capacity=2 * size, loading=lambda: loading, clock=lambda: next(clock))
    a, b, c = (spec(n, f"lru/{n}") for n in "abc")
    cache.local(a, Progress())
    cache.local(b, Progress())
    cache.local(a, Progress())  # a is now the most recently used
    cache.local(c, Progress())  # makes room by evicting b
    assert [cache.on_disk_bytes(m) for m in (a, b, c)] == [size, None, size]
    assert cache.cache_info().used_bytes == 2 * size  # type: ignore[union-attr]

    # Models in use (being loaded onto a GPU) are never evicted: no room, a clear error.
    loading.update({"a", "c"})
    with pytest.raises(
        ModelSourceError, match=r"model b: .*needs \d+ bytes .*models in use cannot be removed \(a, c\)"
    ):
        cache.local(b, Progress())
    assert [cache.on_disk_bytes(m) for m in (a, b, c)] == [size, None, size]
    loading.discard("a")
    cache.local(b, Progress())
    assert [cache.on_disk_bytes(m) for m in (a, b, c)] == [None, size, size]


def test_a_model_larger_than_the_whole_cache_is_refused(s3, tmp_path: Path) -> None:
    upload(s3, "huge/sd", files_of(2 * MIB, 9))
    with pytest.raises(
        ModelSourceError, match=r"model sd: .*needs \d+ bytes in the model cache, which holds 1048576"
    ):
        cache_of(s3, tmp_path, capacity=MIB).local(spec("sd", "huge/sd"), Progress())


def test_pvc_sources_are_read_where_the_claim_is_mounted(tmp_path: Path) -> None:
    mount = tmp_path / "claim"
    (mount / "sd15").mkdir(parents=True)
    (mount / "sd15" / "model_index.json").write_text("{}")
    digest = local_digest(mount / "sd15")
    files = DiskModelFiles(None, None, 1, pvc_mounts={"weights": mount})
    model = ModelSpec(name="sd15", source="pvc://weights/sd15", vram="1Gi", digest=digest)
    assert files.local(model, Progress()).source == f"file://{mount / 'sd15'}"
    assert files.on_disk_bytes(model) == 0 and files.cache_info() is None

    (mount / "sd15" / "model_index.json").write_text('{"changed": true}')
    with pytest.raises(ModelSourceError, match=r"^model sd15: pvc://weights/sd15: digest mismatch"):
        files.local(model, Progress())
    with pytest.raises(ModelSourceError, match=r"^model gone: pvc://weights/gone: nothing at .*claim/gone"):
        files.local(ModelSpec(name="gone", source="pvc://weights/gone", vram="1Gi"), Progress())
    with pytest.raises(
        ModelSourceError, match=r"^model other: pvc://other/sd: nothing at /var/lib/gpufleet/claims/other/sd"
    ):
        files.local(ModelSpec(name="other", source="pvc://other/sd", vram="1Gi"), Progress())


def test_file_sources_pass_through_and_are_checked_against_their_digest(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"weights")
    files = DiskModelFiles(None, None, 1)
    model = ModelSpec(
        name="m", source=f"file://{tmp_path / 'm'}", vram="1Gi", digest=local_digest(tmp_path / "m")
    )
    assert files.local(model, Progress()) == model
    bad = model.model_copy(update={"digest": "sha256:" + "f" * 64})
    with pytest.raises(ModelSourceError, match=r"digest mismatch"):
        files.local(bad, Progress())
    builtin = ModelSpec(name="tiny", source="builtin://tiny-sd", vram="1Gi")
    assert files.local(builtin, Progress()) == builtin


def test_the_manifest_digest_is_what_sha256sum_prints(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.safetensors").write_bytes(b"\x00" * 1000)
    (tmp_path / "Z.json").write_text("{}")
    (tmp_path / "a.txt").write_text("a")
    shell = subprocess.run(
        "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert local_digest(tmp_path) == "sha256:" + shell.stdout.split()[0]


class ListingOnly:
    """An S3 client stub whose listing holds keys a real store might hold but a folder cannot."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def get_paginator(self, _operation: str):
        keys = self.keys

        class Pages:
            def paginate(self, **_: Any):
                return [{"Contents": [{"Key": key, "Size": 1} for key in keys]}]

        return Pages()

    def get_object(self, **_: Any):
        raise AssertionError("nothing is downloaded from a listing that leaves the model folder")


@pytest.mark.parametrize("key", ["sd/../../etc/passwd", "sd//x", "sd/./x"])
def test_object_keys_that_would_leave_the_model_folder_are_refused(tmp_path: Path, key: str) -> None:
    files = cache_of(ListingOnly([key]), tmp_path)
    with pytest.raises(
        ModelSourceError, match=r"^model sd: s3://models/sd: object key .* is not a plain relative path"
    ):
        files.local(spec("sd", "sd"), Progress())
    assert list((tmp_path / "cache").iterdir()) == []
