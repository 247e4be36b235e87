"""The sample run of ``gpufleet up``: the example pool and job, watched until the artifact exists."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from gpufleet.api.models import GROUP, VERSION

from .cluster import LocalCluster
from .fleet import OperatorProcess, apply_crds, install_operator_identity
from .s3server import S3Server

BUCKET = "gpufleet-artifacts"
S3_SECRET = "gpufleet-s3"
NAMESPACE = "studio"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def start_operator(cluster: LocalCluster, s3: S3Server, workdir: Path) -> OperatorProcess:
    api = cluster.api_client()
    apply_crds(api)
    install_operator_identity(api)
    operator = OperatorProcess(
        api, cluster.server, cluster.control_plane.ca_cert, workdir, s3.endpoint, S3_SECRET
    )
    operator.start()
    return operator


def run_sample_job(
    cluster: LocalCluster,
    s3: S3Server,
    operator: OperatorProcess,
    stop: threading.Event,
    timeout: float = 600,
) -> dict[str, Any]:
    """Applies examples/workerpool.yaml and examples/text-to-image.yaml, printing each change."""
    api = cluster.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    core.create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=S3_SECRET),
            string_data={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
        ),
    )
    for example in ("workerpool.yaml", "text-to-image.yaml"):
        print(cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / example)).stdout.strip())
    job = yaml.safe_load((EXAMPLES / "text-to-image.yaml").read_text())["metadata"]["name"]
    last = None
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        body = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "generationjobs", job),
        )
        status = body.get("status") or {}
        progress = status.get("progress") or {}
        percent = f" {progress.get('percent', 0)}%" if status.get("phase") == "Running" else ""
        message = status.get("message", "waiting for the operator")
        line = f"job {job}: {status.get('phase', 'Pending')}{percent} - {message}"
        if line != last:
            print(line, flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            for artifact in status.get("artifacts", []):
                print(
                    f"artifact {artifact['url']} ({artifact['sizeBytes']} bytes, sha256 {artifact['sha256']})"
                )
            if status.get("artifacts"):
                print(f"the objects are in the S3 server at {s3.endpoint} (files under {s3.data_dir})")
            return body
        if time.monotonic() > deadline or not operator.alive():
            raise RuntimeError(f"the sample job did not finish; operator log:\n{operator.log_tail()}")
        stop.wait(0.5)
    return {}
