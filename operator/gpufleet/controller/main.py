"""``gpufleet operator``: metrics, leader election, then the kopf operator."""

from __future__ import annotations

import argparse
import http.server
import importlib
import logging
import signal
import threading
from pathlib import Path

import httpx
import kopf
from kubernetes import client
from prometheus_client import start_http_server

from gpufleet.core.workerpod import WorkerEnv

from . import metrics
from .kube import Kube, load_client
from .leader import LEASE_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_SECONDS, LeaderElector
from .state import Operator, read_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (default)")
    parser.add_argument(
        "--token-key-file",
        type=Path,
        required=True,
        help="secret key the pools' worker tokens are derived from",
    )
    parser.add_argument("--leader-election-namespace", help="hold a Lease here; omit to run without election")
    parser.add_argument(
        "--lease-seconds", type=int, default=LEASE_SECONDS, help="how long a Lease holds without renewal"
    )
    parser.add_argument(
        "--renew-deadline-seconds",
        type=float,
        default=RENEW_DEADLINE_SECONDS,
        help="a leader that has not renewed for this long stops writing and exits (< lease)",
    )
    parser.add_argument(
        "--retry-period-seconds",
        type=float,
        default=RETRY_SECONDS,
        help="how often the leader renews and a standby tries to take the Lease",
    )
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--bind-address", default="0.0.0.0", help="address for metrics and health")
    parser.add_argument("--worker-s3-endpoint", help="S3 endpoint URL the workers write artifacts to")
    parser.add_argument(
        "--worker-s3-secret",
        help="Secret (in each pool's namespace) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    )
    parser.add_argument("--worker-port", type=int, default=8080, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")


class StandbyHealth:
    """``/healthz`` for a replica that is alive and waiting to lead."""

    def __init__(self, address: str, port: int) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path.split("?")[0] == "/healthz"
                self.send_response(200 if ok else 404)
                self.end_headers()
                self.wfile.write(b"standby\n" if ok else b"")

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="standby-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _stop_before_kopf(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    # Until kopf installs its own handlers, SIGTERM (a standby, or a leader still starting)
    # ends the process cleanly, with status 0, instead of by the signal.
    signal.signal(signal.SIGTERM, _stop_before_kopf)
    kopf.configure(verbose=args.verbose)  # sets up logging for kopf and for us
    for noisy in ("kubernetes", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    elector = None
    if args.leader_election_namespace:
        elector = LeaderElector(
            client.CoordinationV1Api(load_client()),
            args.leader_election_namespace,
            lease_seconds=args.lease_seconds,
            renew_deadline_seconds=args.renew_deadline_seconds,
            retry_seconds=args.retry_period_seconds,
        )
    operator = Operator(
        kube=Kube(load_client(), fence=elector.fence if elector else None),
        http=httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)),
        token_key=read_key(args.token_key_file),
        worker_env=WorkerEnv(
            s3_endpoint=args.worker_s3_endpoint, s3_credentials_secret=args.worker_s3_secret
        ),
        worker_port=args.worker_port,
    )
    # Every replica answers scrapes, a standby with gpufleet_leader 0: a Ready endpoint of the
    # metrics Service never fails its scrape.
    metrics.serve_fleet(operator)
    start_http_server(args.metrics_port, addr=args.bind_address)
    if elector is not None:
        # A standby replica is healthy while it waits for the Lease: answer /healthz until
        # it leads, then hand the port to kopf's own liveness endpoint.
        standby = StandbyHealth(args.bind_address, args.health_port)
        try:
            elector.acquire()
        finally:
            standby.close()
    metrics.LEADER.set(1)
    importlib.import_module(f"{__package__}.handlers")  # registers the kopf handlers
    kopf.run(
        memo=kopf.Memo(operator=operator),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://{args.bind_address}:{args.health_port}/healthz",
    )
    if elector is not None:
        elector.release()
    return 0
