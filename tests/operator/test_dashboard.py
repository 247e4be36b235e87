"""``gpufleet dashboard`` in a real headless Chromium against the local fleet (control plane,
operator, worker processes, MinIO): what a person sees while jobs run, what a user without
RBAC sees, and an API server that goes away and comes back."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for

from .chromium import CHROMIUM, Chromium
from .conftest import Fleet

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.localkubelet,
    pytest.mark.s3,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


class Dashboard:
    """``gpufleet dashboard`` as a user starts it: a process with a kubeconfig and AWS variables."""

    def __init__(self, kubeconfig: Path, namespace: str, s3: S3Server, workdir: Path) -> None:
        self.output = workdir / f"dashboard-{kubeconfig.stem}.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        with self.output.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gpufleet.cli", "dashboard", "-n", namespace, "--port", "0"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        line = wait_for(
            lambda: self.output.read_text(),
            lambda text: "(Ctrl-C stops)" in text or self.process.poll() is not None,
            60,
            what="the dashboard's URL",
        )
        assert f"gpufleet dashboard of namespace {namespace}: http://127.0.0.1:" in line, line
        self.url = line.split(f"namespace {namespace}: ", 1)[1].split()[0]

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(15) == 0, self.output.read_text()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path)
    try:
        yield chromium
    finally:
        chromium.close()


@contextlib.contextmanager
def dashboard(kubeconfig: Path, namespace: str, s3: S3Server, workdir: Path) -> Iterator[Dashboard]:
    running = Dashboard(kubeconfig, namespace, s3, workdir)
    try:
        yield running
    finally:
        running.stop()


def job_row(browser: Chromium, key: str) -> dict | None:
    """What the page's row of a job shows: phase, percent and its artifacts' loaded images."""
    return browser.evaluate(
        f"""(() => {{
        const row = document.querySelector('#jobs tr[data-job={json.dumps(key)}]');
        if (!row) return null;
        return {{phase: row.dataset.phase, percent: Number(row.dataset.percent), text: row.innerText,
                 images: [...row.querySelectorAll('img.thumb')].map(i => i.complete ? i.naturalWidth : 0)}};
        }})()"""
    )


GPU_BARS = """[...document.querySelectorAll('.pool .gpu .bar')].map(bar =>
    [...bar.querySelectorAll('.seg')].map(s => [s.dataset.kind, s.dataset.name, Number(s.dataset.bytes),
                                               s.getBoundingClientRect().width]))"""


def test_a_person_sees_pools_vram_bars_the_queue_and_a_job_progressing(
    cluster: Any, fleet: Fleet, s3_server: S3Server, browser: Chromium, tmp_path: Path
) -> None:
    ns = fleet.namespace
    fleet.pool("sd", replicas=1, max_jobs_per_gpu=1)
    fleet.wait_ready_workers("sd", 1)
    with dashboard(Path(cluster.kubeconfig), ns, s3_server, tmp_path) as shown:
        browser.open(shown.url)
        wait_for(
            lambda: browser.evaluate("document.querySelector('.pool .workers-ready')?.textContent"),
            lambda text: text == "workers 1/1 ready",
            90,
            what="the pool card with its ready worker",
        )
        assert browser.evaluate("document.getElementById('connection').dataset.state") == "live"
        browser.evaluate("window.openedOnce = true")  # gone if the page were reloaded
        fleet.job("sunrise", steps=250, size=256)
        fleet.job("later", steps=4)  # one job per GPU: this one waits in the queue
        fleet.job("orphan", pool="nowhere")  # cannot run: its pool does not exist

        # The running job's bar moves, without a reload, until it succeeded.
        key = f"{ns}/sunrise"
        seen: list[int] = []
        bars_while_running: list[list] = []
        queue_while_running: list[str] = []
        shot = tmp_path / "dashboard-running.png"

        def observe() -> dict | None:
            row = job_row(browser, key)
            if row and row["phase"] in ("Running", "Succeeded") and (not seen or seen[-1] != row["percent"]):
                seen.append(row["percent"])
            if row and row["phase"] == "Running":
                (segments,) = browser.evaluate(GPU_BARS)  # one worker, one GPU
                bars_while_running.append(segments)
                queue_while_running.append(browser.evaluate("document.getElementById('queue').innerText"))
                if 30 <= row["percent"] <= 70 and segments[1][2] > 0 and not shot.exists():
                    browser.screenshot(shot)
            return row

        final = wait_for(
            observe, lambda r: r is not None and r["phase"] == "Succeeded", 300, interval=0.1, what="sunrise"
        )
        assert len({p for p in seen if 0 < p < 100}) >= 2, f"the bar did not move: {seen}"
        assert seen == sorted(seen) and seen[-1] == 100, seen
        # While it ran, the GPU's bar held the resident model (1Gi) and the job's reservation (1Gi).
        # The rest is free; how much depends on the node the scheduler chose (16 or 24 GiB GPUs).
        split = [["model", "tiny-sd", 2**30], ["jobs", "jobs", 2**30]]
        drawn = [
            s
            for s in bars_while_running
            if [seg[:3] for seg in s[:2]] == split and len(s) == 3 and s[2][:2] == ["free", "free"]
        ]
        assert drawn, bars_while_running[-1:]
        assert all(width > 0 for *_, width in drawn[-1]), drawn[-1]
        assert shot.exists(), f"no screenshot of the job at 30-70% with its reservation; seen {seen}"
        assert any("later" in q and "Queued" in q for q in queue_while_running), queue_while_running[-1:]
        assert "Succeeded" in final["text"] and "100%" in final["text"]

        # The artifact's thumbnail loads through a presigned URL from MinIO.
        row = wait_for(
            lambda: job_row(browser, key),
            lambda r: r and r["images"] and all(r["images"]),
            60,
            what="thumbnail",
        )
        assert row["images"] == [256]
        # The job that cannot run says why, in the queue.
        orphan = browser.evaluate(f"document.querySelector('#queue tr[data-job=\"{ns}/orphan\"]')?.innerText")
        assert "PoolNotFound" in orphan and "nowhere" in orphan, orphan
        models = browser.evaluate("document.getElementById('models').innerText")
        assert "tiny-sd" in models and "gpu 0" in models, models
        wait_for(lambda: job_row(browser, f"{ns}/later"), lambda r: r and r["phase"] == "Succeeded", 120)
        history = browser.evaluate("document.getElementById('history').innerText")
        assert "2 in 60 min" in history, history
        assert browser.evaluate("window.openedOnce === true"), "the page was reloaded"
        browser.screenshot(tmp_path / "dashboard-done.png")


def nobody_kubeconfig(cluster: Any, namespace: str, path: Path) -> Path:
    """A ServiceAccount's token, bound to nothing."""
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    admin["users"] = [{"name": "nobody", "user": {"token": token}}]
    admin["contexts"] = [
        {"name": "nobody", "context": {"cluster": admin["clusters"][0]["name"], "user": "nobody"}}
    ]
    admin["current-context"] = "nobody"
    path.write_text(yaml.safe_dump(admin))
    return path


def test_a_user_without_rbac_reads_why_on_the_page(
    cluster: Any, fleet: Fleet, s3_server: S3Server, browser: Chromium, tmp_path: Path
) -> None:
    kubeconfig = nobody_kubeconfig(cluster, fleet.namespace, tmp_path / "nobody.kubeconfig")
    with dashboard(kubeconfig, fleet.namespace, s3_server, tmp_path) as shown:
        browser.open(shown.url)
        problems = wait_for(
            lambda: browser.evaluate("document.getElementById('problems').innerText"),
            lambda text: "workerpools" in text and "generationjobs" in text,
            60,
            what="the RBAC problems on the page",
        )
        for resource in ("workerpools.gpufleet.io", "generationjobs.gpufleet.io"):
            assert f'no permission to watch {resource} in namespace "{fleet.namespace}"' in problems, problems
        assert "'view' role" in problems
        browser.screenshot(tmp_path / "dashboard-forbidden.png")


def port_below_ephemeral_range() -> int:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.Random().sample(range(10000, low), 500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


class Proxy:
    """A TCP relay to the API server that can be cut and restored on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.connections: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        if not self.port:
            # Below the ephemeral range: no outgoing connection takes the port while it is cut.
            self.port = port_below_ephemeral_range()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                inbound, _ = listener.accept()
            except OSError:
                return  # cut
            outbound = socket.create_connection(self.target)
            self.connections += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self.listener is not None
        # shutdown() wakes the thread blocked in accept(); close() alone leaves the port listening.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self.connections.clear()


def test_the_page_says_disconnected_while_the_api_server_is_gone_and_recovers(
    cluster: Any, fleet: Fleet, s3_server: S3Server, browser: Chromium, tmp_path: Path
) -> None:
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server = admin["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    proxy.start()
    admin["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    admin["contexts"][0]["context"]["namespace"] = fleet.namespace
    kubeconfig = tmp_path / "proxied.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(admin))
    connection = "document.getElementById('connection')"
    try:
        with dashboard(kubeconfig, fleet.namespace, s3_server, tmp_path) as shown:
            browser.open(shown.url)
            state = f"{connection}.dataset.state"
            wait_for(lambda: browser.evaluate(state), lambda s: s == "live", 60, what="live")
            proxy.cut()
            wait_for(lambda: browser.evaluate(state), lambda s: s == "disconnected", 60, what="disconnected")
            text = browser.evaluate(
                f"{connection}.textContent + ' ' + document.getElementById('problems').innerText"
            )
            assert "API server disconnected" in text and "cannot reach the API server" in text, text
            browser.screenshot(tmp_path / "dashboard-disconnected.png")
            fleet.pool("while-away", replicas=0)  # made while the dashboard could not see
            proxy.start()
            card = f"document.querySelector('[data-pool=\"{fleet.namespace}/while-away\"]')"
            wait_for(
                lambda: browser.evaluate(f"[{state}, {card} !== null]"),
                lambda found: found == ["live", True],
                90,
                what="live again, with the pool made meanwhile",
            )
            assert browser.evaluate("document.getElementById('problems').innerText") == ""
    finally:
        proxy.cut()
