"""Chaos benchmark: the chaos scenario at full size on a local control plane of its own.

    python -m bench.chaos                 # 200 jobs, one every 1.5 s, 40 faults, default Lease
    python -m bench.chaos --jobs 60 --rounds 1

Two operator replicas with the default leader-election settings (Lease 13 s, renew deadline
10 s, retry 2 s) run behind recording API proxies that answer 20% of job status writes with
409. Each round lands, while jobs run, a leader SIGKILL, a leader freeze past its Lease
(SIGSTOP, takeover, SIGCONT), a leader SIGTERM, a worker SIGKILL, a worker pod deletion and
both replicas down while a pool and a job are deleted and jobs created. It prints the jobs,
the faults that landed, the jobs lost or run twice, terminal phases that moved back, writes
by two replicas at once, and the failover times beside the target (15 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kubernetes import client

from gpufleet.controller.leader import LEASE_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_SECONDS
from gpufleet.localcluster import simnodes
from gpufleet.localcluster.cluster import LocalCluster
from gpufleet.localcluster.fleet import OperatorProcess, apply_crds, install_operator_identity
from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for

from .scenario import FAULTS, Chaos, ChaosPlan, save

BUCKET, S3_SECRET, NAMESPACE = "chaos-artifacts", "chaos-s3", "chaos"
FAILOVER_TARGET_SECONDS = 15


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6, help="each round lands every fault once")
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between job submissions")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-chaos-"))
    plan = ChaosPlan(
        jobs=args.jobs,
        submit_interval=args.interval,
        faults=FAULTS * args.rounds,
        lease_seconds=LEASE_SECONDS,
        renew_deadline_seconds=RENEW_DEADLINE_SECONDS,
        retry_seconds=RETRY_SECONDS,
        seed=args.seed,
        timeout=3600,
    )
    with LocalCluster(workdir / "cluster", simnodes.DEFAULT_FLEET) as cluster, S3Server() as s3:
        api = cluster.api_client()
        apply_crds(api)
        install_operator_identity(api)
        s3.create_bucket(BUCKET)
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        wait_for(lambda: core.read_namespaced_service_account("default", NAMESPACE), bool, 30)
        core.create_namespaced_secret(
            NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=S3_SECRET),
                string_data={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
            ),
        )

        def make_operator(server: str, name: str, lease_args: tuple[str, ...]) -> OperatorProcess:
            return OperatorProcess(
                api,
                server,
                cluster.control_plane.ca_cert,
                workdir / name,
                s3.endpoint,
                S3_SECRET,
                extra_args=lease_args,
            )

        report = Chaos(cluster, NAMESPACE, BUCKET, s3.client(), make_operator, workdir, plan).run()
    summary = report.summary()
    save(report, workdir / "chaos.json")
    failovers = sorted(seconds for _, seconds in report.failover_seconds)
    print(json.dumps(summary, indent=2))
    if failovers:
        print(
            f"failover: median {failovers[len(failovers) // 2]:.1f} s, max {failovers[-1]:.1f} s "
            f"(target <= {FAILOVER_TARGET_SECONDS} s with Lease {LEASE_SECONDS} s / renew deadline "
            f"{RENEW_DEADLINE_SECONDS} s / retry {RETRY_SECONDS} s)"
        )
    problems = report.problems()
    for problem in problems:
        print("PROBLEM:", problem)
    print(f"report: {workdir / 'chaos.json'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
