"""Worker configuration: file, environment and flags, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpufleet_worker.config import WorkerConfig, config_file_text, load_config

MODEL = "name=tiny-sd,source=builtin://tiny-sd,vram=512Mi"
MODEL2 = "name=other,source=builtin://tiny-sd,vram=512Mi"


def test_flags_override_the_environment_which_overrides_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "worker.yaml"
    config_file.write_text(
        "tokenFile: /run/token\nport: 9000\nhost: 0.0.0.0\n"
        "models:\n  - {name: sd15, source: 'file:///models/sd15', vram: 3Gi}\n"
        "s3: {endpointUrl: 'http://file-endpoint:9000'}\n"
        "simulatedGpu: {product: Sim-L4, memory: 24Gi}\n"
    )
    env = {
        "GPUFLEET_WORKER_CONFIG": str(config_file),
        "GPUFLEET_S3_ENDPOINT": "http://env-endpoint:9000",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "POD_NAME": "sd15-7xk2p",
    }
    config = load_config(["--host", "127.0.0.5", "--simulated-gpu-memory", "16Gi"], env=env)
    assert (config.host, config.port, config.name) == ("127.0.0.5", 9000, "sd15-7xk2p")
    assert config.models[0].vram == 3 * 2**30
    assert config.s3.endpoint_url == "http://env-endpoint:9000"
    assert (config.s3.access_key_id, config.s3.secret_access_key) == ("key", "secret")
    assert (config.simulated_gpu.product, config.simulated_gpu.memory) == ("Sim-L4", 16 * 2**30)

    flagged = load_config(["--model", MODEL, "--s3-endpoint", "http://flag:9000"], env=env)
    assert [m.name for m in flagged.models] == ["tiny-sd"]
    assert flagged.s3.endpoint_url == "http://flag:9000"


def test_the_written_config_reads_back_and_never_holds_credentials(tmp_path: Path) -> None:
    config = load_config(
        ["--token-file", "/run/token", "--model", MODEL],
        env={"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"},
    )
    text = config_file_text(config)
    assert "secret" not in text and 'key"' not in text
    (tmp_path / "worker.json").write_text(text)
    again = load_config(["--config", str(tmp_path / "worker.json")], env={})
    assert again.models == config.models and again.token_file == config.token_file


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--model", "name=tiny-sd,source=builtin://tiny-sd,vram=lots"], "models.0.vram"),
        (["--model", "name=x,source=s3://bucket/model,vram=1Gi"], "modelCache.path is required"),
        (["--model", "name=x,source=pvc://claim/../etc,vram=1Gi"], "models.0.source"),
        (["--model", "name=x,source=builtin://tiny-sd,vram=1Gi,digest=sha256:" + "0" * 64], "models.0"),
        (["--model", "name=x,source=file:///m,vram=1Gi,digest=md5:0"], "models.0.digest"),
        (["--model", MODEL, "--model-cache", "/c", "--model-cache-size", "0"], "modelCache.capacity"),
        (["--model", MODEL, "--model", MODEL], "names must be unique"),
        (["--model", MODEL, "--port", "70000"], "port"),
        (["--model", MODEL, "--allow-image-network", "not-a-cidr"], "allowedNetworks"),
        (["--model", MODEL, "--simulated-gpu-memory", "0"], "simulatedGpu.memory"),
        (["--model", MODEL, "--max-request-bytes", "0"], "maxRequestBytes"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        load_config(["--token-file", "/run/token", *argv], env={})


def test_request_bodies_are_limited_to_1mi_unless_configured() -> None:
    assert load_config(["--token-file", "/t", "--model", MODEL], env={}).max_request_bytes == 2**20
    flagged = load_config(["--token-file", "/t", "--model", MODEL, "--max-request-bytes", "64Ki"], env={})
    assert flagged.max_request_bytes == 64 * 1024


def test_model_sources_digests_cache_and_claims_from_flags() -> None:
    digest = "sha256:" + "ab" * 32
    config = load_config(
        [
            "--token-file", "/t",
            "--model", f"name=sd,source=s3://weights/sd15,vram=2Gi,digest={digest}",
            "--model", "name=xl,source=pvc://weights-claim/sdxl,vram=8Gi",
            "--model-cache", "/var/cache/models",
            "--model-cache-size", "20Gi",
            "--pvc-mount", "weights-claim=/mnt/weights",
        ],
        env={},
    )  # fmt: skip
    assert config.models[0].digest == digest and config.models[1].digest is None
    assert config.model_cache.path == Path("/var/cache/models") and config.model_cache.capacity == 20 * 2**30
    assert config.pvc_mounts == {"weights-claim": Path("/mnt/weights")}
    with pytest.raises(ValueError, match=r"--pvc-mount 'weights': expected CLAIM=DIR"):
        load_config(["--token-file", "/t", "--model", MODEL, "--pvc-mount", "weights"], env={})


def test_a_model_flag_must_be_key_value_pairs() -> None:
    with pytest.raises(ValueError, match=r"expected name=\.\.\.,source="):
        load_config(["--token-file", "/t", "--model", "tiny-sd"], env={})


def test_models_and_token_file_are_required() -> None:
    with pytest.raises(ValidationError) as error:
        WorkerConfig.model_validate({})
    assert {e["loc"][0] for e in error.value.errors()} >= {"tokenFile", "models"}


def test_a_config_file_must_hold_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(["--config", str(tmp_path / "c.json")], env={})


def test_a_model_flag_with_a_task_that_does_not_exist_names_it() -> None:
    with pytest.raises(ValidationError) as refused:
        load_config(["--token-file", "/t", "--model", MODEL + ",tasks=segment+paint"], env={})
    assert "models.0.tasks.1" in str(refused.value)
    with pytest.raises(ValueError, match=r"expected name=\.\.\.,source=\.\.\.,vram=\.\.\.\[,tasks=a\+b\]"):
        load_config(["--token-file", "/t", "--model", MODEL + ",kind=sam"], env={})


def test_a_model_flag_may_preload_the_model() -> None:
    config = load_config(
        ["--token-file", "/t", "--model", MODEL + ",preload=true", "--model", MODEL2], env={}
    )
    assert [m.preload for m in config.models] == [True, False]
    with pytest.raises(ValueError, match=r"preload must be true or false \(got 'yes'\)"):
        load_config(["--token-file", "/t", "--model", MODEL + ",preload=yes"], env={})
