"""The ``gpufleet`` command (also the kubectl plugin ``kubectl gpufleet``).

Jobs:     submit, get, list, describe, wait, cancel, delete, cp, url, top, completion
          (see docs/cli.md; these need only the light `client` extra)
gpufleet up        bring up the local fleet: a real control plane on loopback with
                   simulated GPU nodes; stays in the foreground until Ctrl-C.
gpufleet operator  run the operator.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from gpufleet.client import commands

# The operator's and the local fleet's modules are imported by their sub-commands only, so
# the user's commands run with the light `client` extra (no kopf, numba or torch).


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpufleet" / "local"


def up(args: argparse.Namespace) -> int:
    from gpufleet.localcluster import binaries, demo
    from gpufleet.localcluster.cluster import LocalCluster
    from gpufleet.localcluster.s3server import S3Server

    state_dir: Path = args.state_dir
    print(f"starting the local fleet in {state_dir} ...", flush=True)
    shutil.rmtree(state_dir, ignore_errors=True)  # every run starts a fresh fleet
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as running:
        cluster = LocalCluster(state_dir).start()
        running.callback(cluster.stop)
        print(
            f"control plane up in {cluster.control_plane.startup_seconds:.1f}s; "
            f"fleet ready in {cluster.startup_seconds:.1f}s"
        )
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.memory").stdout)
        s3 = S3Server(state_dir / "s3").start()
        running.callback(s3.stop)
        s3.create_bucket(demo.BUCKET)
        operator = demo.start_operator(cluster, s3, state_dir / "operator")
        running.callback(operator.stop)
        print(f"S3 server at {s3.endpoint}; operator running (log: {operator.workdir})", flush=True)
        if not args.no_demo:
            demo.run_sample_job(cluster, s3, operator, stop)
        print("\npoint kubectl at it with:")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print(f"  alias kubectl={binaries.ensure('kubectl')}")
        print("  kubectl get wp,gj -A -o wide")
        print("and the CLI at its artifacts (gpufleet cp, url, and the dashboard's previews) with:")
        print(
            f"  export AWS_ENDPOINT_URL={s3.endpoint} AWS_ACCESS_KEY_ID={s3.access_key} "
            f"AWS_SECRET_ACCESS_KEY={s3.secret_key}"
        )
        print("  gpufleet dashboard -A    # the live web page, at http://127.0.0.1:8765/")
        if args.exit_after_start:
            return 0
        print("Ctrl-C stops the fleet and every process it started.", flush=True)
        stop.wait()
    print("local fleet stopped")
    return 0


def run_operator(argv: list[str]) -> int:
    from gpufleet.controller import main as controller_main

    parser = argparse.ArgumentParser(prog="gpufleet operator", description="run the operator")
    controller_main.add_arguments(parser)
    return int(controller_main.run(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    prog = "kubectl gpufleet" if Path(sys.argv[0]).name.startswith("kubectl-") else "gpufleet"
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subcommands = parser.add_subparsers(dest="command", required=True)
    commands.add_commands(subcommands, parser)
    up_parser = subcommands.add_parser("up", help="bring up the local fleet")
    up_parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where certificates, logs, the kubeconfig and pod files go (default: %(default)s)",
    )
    up_parser.add_argument(
        "--exit-after-start",
        action="store_true",
        help="stop again once everything is up and the sample job ran (a smoke test)",
    )
    up_parser.add_argument("--no-demo", action="store_true", help="skip the sample pool and job")
    up_parser.set_defaults(func=up)
    # Its own flags are parsed by the operator's parser, which only the operator imports.
    subcommands.add_parser(
        "operator", help="run the operator (in a pod, or against $KUBECONFIG)", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "operator":
        return run_operator(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if commands.is_user_command(args.command):
        return commands.run(args)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
