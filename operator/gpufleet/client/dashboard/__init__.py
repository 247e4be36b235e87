"""``gpufleet dashboard``: a read-only live web page of pools, GPUs, models, the queue and
jobs, served on this machine with the user's kubeconfig (their RBAC applies)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

from gpufleet.client.dashboard.server import DashboardServer
from gpufleet.client.dashboard.watch import FleetWatch
from gpufleet.client.errors import ClientError
from gpufleet.client.jobs import Client

PRESIGNED_SECONDS = 3600


def serve(
    client: Client,
    all_namespaces: bool,
    address: str,
    port: int,
    s3_settings: Any,
    allowed_hosts: Sequence[str] = (),
) -> int:
    """Serves until SIGINT or SIGTERM; prints the URL first. ``allowed_hosts``: Host headers
    answered besides the address it listens on (the names a proxy or an ingress uses)."""
    from gpufleet.client.artifacts import presigned_url  # boto3 only once the dashboard runs

    def presign(job: Any, artifact: str) -> str:
        return presigned_url(job, artifact, s3_settings, PRESIGNED_SECONDS)

    fleet = FleetWatch(client, all_namespaces)
    try:
        server = DashboardServer((address, port), fleet, presign, allowed_hosts)
    except OSError as exc:
        raise ClientError(
            f"cannot listen on {address}:{port}: {exc.strerror or exc}; choose another --port"
        ) from exc
    fleet.start()
    print(f"gpufleet dashboard of {fleet.scope}: {server.url}  (Ctrl-C stops)", flush=True)
    stopped = threading.Event()

    def stop(*_: Any) -> None:
        if not stopped.is_set():
            stopped.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
