"""``gpufleet dashboard`` as a process, without a cluster: its failure paths (no kubeconfig,
an API server that does not answer, a port in use), what it serves, and what it refuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.localcluster.waiting import wait_for

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: gone, context: {{cluster: gone, user: u, namespace: studio}}}}]
current-context: gone
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard(kubeconfig: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpufleet.cli", "dashboard", "--port", "0", *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dashboard whose API server does not answer; yields its URL."""
    kubeconfig = tmp_path_factory.mktemp("dashboard") / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=closed_port()))
    process = dashboard(kubeconfig, "--allowed-host", "fleet.example:443")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "gpufleet dashboard of namespace studio: http://127.0.0.1:" in line, line
        yield line.split(": ", 1)[1].split()[0]
    finally:
        process.terminate()
        assert process.wait(10) == 0


def test_an_api_server_that_does_not_answer_shows_as_disconnected(unreachable: str) -> None:
    shown = wait_for(
        lambda: httpx.get(unreachable + "api/view").json(),
        lambda v: not v["connected"] and len(v["problems"]) == 2,
        30,
        what="the view to say disconnected",
    )
    for problem in shown["problems"]:
        assert problem["message"].startswith(f"watching {problem['resource']}.gpufleet.io: "), problem
        assert "cannot reach the API server at https://127.0.0.1:" in problem["message"], problem


def test_it_serves_the_page_its_files_and_events_and_refuses_other_hosts(unreachable: str) -> None:
    page = httpx.get(unreachable)
    assert page.status_code == 200 and '<script src="/static/dashboard.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(unreachable + "static/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript") and "EventSource" in script.text
    assert httpx.get(unreachable + "static/../../cli.py").status_code == 404
    with httpx.stream("GET", unreachable + "events") as events:
        assert events.headers["content-type"] == "text/event-stream"
        lines = events.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")).startswith('data: {"now"')
    # A page elsewhere that rebinds its DNS name to 127.0.0.1 gets nothing.
    rebound = httpx.get(unreachable + "api/view", headers={"Host": "evil.example:80"})
    assert rebound.status_code == 403 and "unexpected Host header" in rebound.text
    # A name it was told it is reached by (an ingress, a port-forward) is answered.
    assert httpx.get(unreachable + "api/view", headers={"Host": "fleet.example:443"}).status_code == 200
    missing = httpx.get(unreachable + "artifacts/studio/ghost/image-0.png")
    assert missing.status_code == 404 and 'generationjob "ghost" not found' in missing.text
    assert httpx.post(unreachable + "api/view").status_code == 501  # read-only


def test_no_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    process = dashboard(tmp_path / "missing")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2 and out == ""
    assert err.startswith("error: no usable kubeconfig") and "set KUBECONFIG or pass --kubeconfig" in err


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=closed_port()))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "gpufleet.cli", "dashboard", "--port", str(port)],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert process.returncode == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in process.stderr and "--port" in process.stderr
