"""A kubelet stand-in: runs the pods bound to simulated GPU nodes as local processes.

For each pod bound to one of its nodes it gives the pod its own loopback address as pod
IP, from a 127.N.0.0/16 no other local cluster on the machine holds (``podnetwork``), so
many workers can listen on the same port; materializes its
volumes (Secrets, ConfigMaps, projected ServiceAccount tokens from the TokenRequest API,
downward API, emptyDir) under the pod's directory, and maps hostPath volumes and claims bound
to local or hostPath PersistentVolumes to their directories; runs each container's command with the
pod's environment; honours startup, readiness and liveness probes and the restart policy; reports
phase, readiness, restarts and exit codes; and kills the processes when the pod is
deleted. A pod that mounts a ServiceAccount token also gets ``KUBECONFIG`` pointing at a
kubeconfig with that token, so its program acts with exactly the RBAC its pod would have.

Nodes annotated simulated-only run no process: their pods go Running and Ready at once,
for scale tests of thousands of pods.

    python -m gpufleet.localcluster.kubelet --kubeconfig admin.kubeconfig \
        --fleet fleet.json --state-dir /tmp/pods

What it does not do: pull images (a container's ``command`` must name a program on this
machine), enforce resource limits, or serve logs/exec (logs are files under the state dir).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from gpufleet import labels

from . import podnetwork, simnodes
from .controlplane import write_kubeconfig
from .podnetwork import IPPool
from .podspec import (
    ContainerState,
    PodSpecError,
    container_env,
    expand,
    field_ref,
    pod_status,
    translate_paths,
)
from .processes import signal_group

log = logging.getLogger("gpufleet.localkubelet")

HOST_IP = "127.0.0.1"
TICK_SECONDS = 0.25
LEASE_RENEW_SECONDS = 5
TERMINATED_LOGS = "terminated-logs"  # under the state dir: logs of pods that are gone
# Local restarts back off faster than a real kubelet (10 s doubling to 5 min): tests wait on them.
RESTART_BACKOFF_SECONDS = (1, 2, 4, 8, 16, 30)
SA_TOKEN_SECONDS = 3600
CONFIG_RETRY_SECONDS = 1.0


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Probe:
    """One startup, readiness or liveness probe with the kubelet's thresholds."""

    def __init__(self, spec: Mapping, container: Mapping) -> None:
        self.spec = spec
        self.container = container
        self.period = spec.get("periodSeconds", 10)
        self.timeout = spec.get("timeoutSeconds", 1)
        self.failure_threshold = spec.get("failureThreshold", 3)
        self.success_threshold = spec.get("successThreshold", 1)
        self.next_at = 0.0
        self.successes = 0
        self.failures = 0

    def arm(self, started: float) -> None:
        self.next_at = started + self.spec.get("initialDelaySeconds", 0)
        self.successes = self.failures = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"probe names port {port!r} the container does not declare")

    def check(self, pod_ip: str, env: Mapping[str, str]) -> bool:
        self.next_at = time.monotonic() + self.period
        try:
            ok = self._run(pod_ip, env)
        except Exception as error:
            log.debug("probe error: %s", error)
            ok = False
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        return ok

    def _run(self, pod_ip: str, env: Mapping[str, str]) -> bool:
        if http := self.spec.get("httpGet"):
            scheme = http.get("scheme", "HTTP").lower()
            host = http.get("host") or pod_ip
            url = f"{scheme}://{host}:{self._port(http['port'])}{http.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in http.get("httpHeaders") or []}
            response = httpx.get(url, headers=headers, timeout=self.timeout, verify=False)
            return 200 <= response.status_code < 400
        if tcp := self.spec.get("tcpSocket"):
            with socket.create_connection((tcp.get("host") or pod_ip, self._port(tcp["port"])), self.timeout):
                return True
        if exec_ := self.spec.get("exec"):
            result = subprocess.run(
                exec_["command"], env=dict(env), timeout=self.timeout, capture_output=True, check=False
            )
            return result.returncode == 0
        raise ValueError("unsupported probe (only httpGet, tcpSocket and exec run locally)")


class Container:
    """A container's process, its probes and its reported state."""

    def __init__(
        self, spec: Mapping, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.spec = spec
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.state = ContainerState(name=spec["name"], image=spec.get("image", ""))
        self.process: subprocess.Popen[bytes] | None = None
        self.restart_at: float | None = 0.0
        self.startup = Probe(spec["startupProbe"], spec) if spec.get("startupProbe") else None
        self.readiness = Probe(spec["readinessProbe"], spec) if spec.get("readinessProbe") else None
        self.liveness = Probe(spec["livenessProbe"], spec) if spec.get("livenessProbe") else None
        self.started = self.startup is None  # other probes wait until the startup probe passes

    def start(self) -> None:
        self.restart_at = None
        with open(self.log_path, "ab") as log_file:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as error:
                self.state.waiting = ("RunContainerError", str(error))
                self.state.terminated = None
                self.restart_at = time.monotonic() + RESTART_BACKOFF_SECONDS[-1]
                return
        started = time.monotonic()
        self.state.running_since = now_rfc3339()
        self.state.waiting = None
        self.state.terminated = None
        self.started = self.startup is None
        self.state.ready = self.readiness is None and self.started
        for probe in (self.startup, self.readiness, self.liveness):
            if probe:
                probe.arm(started)

    def kill(self, grace_seconds: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Whatever the program forked into its session goes too.
        signal_group(self.process.pid, signal.SIGKILL)

    def reap(self) -> int | None:
        """Exit code if the process has just ended (and records it), else None."""
        if self.process is None or self.state.running_since is None:
            return None
        code = self.process.poll()
        if code is None:
            return None
        signal_group(self.process.pid, signal.SIGKILL)
        exit_code = code if code >= 0 else 128 - code  # killed by signal N reports 128+N
        self.state.terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": self.state.running_since,
            "finishedAt": now_rfc3339(),
        }
        self.state.running_since = None
        self.state.ready = False
        return exit_code


class PodRunner(threading.Thread):
    """Runs one pod's containers until the pod is deleted or finishes."""

    def __init__(self, kubelet: LocalKubelet, pod: dict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.key = (meta["namespace"], meta["name"])
        self.uid = meta["uid"]
        self.dir = kubelet.state_dir / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        self.stop_requested = threading.Event()
        self.grace_seconds = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.pod_ip: str | None = None
        self.start_time = now_rfc3339()
        self.containers: list[Container] = []
        self.last_status: dict | None = None

    # -- lifecycle -------------------------------------------------------------------
    def request_stop(self, grace_seconds: float | None = None) -> None:
        if grace_seconds is not None:
            self.grace_seconds = grace_seconds
        self.stop_requested.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: runner failed", *self.key)
        finally:
            for container in self.containers:
                container.kill(0)
            if self.pod_ip:
                self.kubelet.ips.release(self.pod_ip)
            self.kubelet.runner_done(self)

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.pod_ip = HOST_IP if spec.get("hostNetwork") else self.kubelet.ips.allocate()
        if self.kubelet.is_simulated_only(spec["nodeName"]):
            self._run_simulated()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        # Like the kubelet, retry until what the pod refers to exists (a Secret created
        # after the pod, the namespace's kube-root-ca.crt ConfigMap that arrives a moment late).
        while True:
            try:
                mounts_by_volume = self._materialize_volumes()
                self.containers = [self._container(c, mounts_by_volume) for c in spec["containers"]]
                break
            except PodSpecError as error:
                self._report_config_error(error)
                if self.stop_requested.wait(CONFIG_RETRY_SECONDS):
                    self._finish()
                    return
        restart_policy = spec.get("restartPolicy", "Always")
        for container in self.containers:
            container.start()
        self._push_status()
        while not self.stop_requested.wait(TICK_SECONDS):
            changed = self._tick(restart_policy)
            if changed:
                self._push_status()
        self._finish()

    def _run_simulated(self) -> None:
        self.containers = []
        for spec in self.pod["spec"]["containers"]:
            container = Container(spec, [], {}, self.kubelet.state_dir, Path(os.devnull))
            container.state.running_since = now_rfc3339()
            container.state.waiting = None
            container.state.ready = True
            self.containers.append(container)
        self._push_status()
        self.stop_requested.wait()
        self._finish()

    def _finish(self) -> None:
        for container in self.containers:
            container.kill(self.grace_seconds)
        if self.kubelet.pod_is_terminating(self.key, self.uid):
            # The kubelet's last word on a deleted pod: remove it now that nothing runs.
            try:
                self.kubelet.core.delete_namespaced_pod(
                    self.key[1],
                    self.key[0],
                    grace_period_seconds=0,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                )
            except ApiException as error:
                if error.status not in (404, 409):
                    raise
        # Keep the containers' logs, as a cluster's log agent would: tests read what the
        # processes of deleted pods did.
        kept = self.kubelet.state_dir / TERMINATED_LOGS / self.dir.name
        for log_file in self.dir.glob("*.log"):
            kept.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.move(log_file, kept / log_file.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _tick(self, restart_policy: str) -> bool:
        now = time.monotonic()
        changed = False
        for container in self.containers:
            code = container.reap()
            if code is not None:
                changed = True
                log.info("pod %s/%s container %s exited %s", *self.key, container.state.name, code)
                if restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0):
                    backoff = RESTART_BACKOFF_SECONDS[
                        min(container.state.restart_count, len(RESTART_BACKOFF_SECONDS) - 1)
                    ]
                    container.restart_at = now + backoff
            if container.restart_at and now >= container.restart_at:
                container.state.last_terminated = container.state.terminated
                container.state.restart_count += 1
                container.start()
                changed = True
            if container.state.running_since is None or self.pod_ip is None:
                continue
            if container.startup is not None and not container.started:
                if container.startup.due(now) and container.startup.check(self.pod_ip, container.env):
                    container.started = True
                    if container.readiness is None:
                        container.state.ready = changed = True
                elif container.startup.failures >= container.startup.failure_threshold:
                    log.info(
                        "pod %s/%s container %s failed startup; killing", *self.key, container.state.name
                    )
                    container.kill(self.grace_seconds)
                continue
            if container.readiness and container.readiness.due(now):
                container.readiness.check(self.pod_ip, container.env)
                ready = container.state.ready
                if not ready and container.readiness.successes >= container.readiness.success_threshold:
                    ready = True
                elif ready and container.readiness.failures >= container.readiness.failure_threshold:
                    ready = False
                changed |= ready != container.state.ready
                container.state.ready = ready
            if container.liveness and container.liveness.due(now):
                container.liveness.check(self.pod_ip, container.env)
                if container.liveness.failures >= container.liveness.failure_threshold:
                    log.info(
                        "pod %s/%s container %s failed liveness; killing", *self.key, container.state.name
                    )
                    container.kill(self.grace_seconds)
        return changed

    # -- pod spec to processes ----------------------------------------------------------
    def _lookup(self, kind: str, name: str) -> Mapping[str, str] | None:
        namespace = self.key[0]
        try:
            if kind == "Secret":
                secret = self.kubelet.core.read_namespaced_secret(name, namespace)
                return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
            config_map = self.kubelet.core.read_namespaced_config_map(name, namespace)
            return dict(config_map.data or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _materialize_volumes(self) -> dict[str, tuple[Path, str | None]]:
        """Writes each volume under the pod dir; returns volume -> (dir, SA token file or None)."""
        volumes: dict[str, tuple[Path, str | None]] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            target = self.dir / "volumes" / name
            target.mkdir(parents=True, exist_ok=True)
            token_file = None
            if "emptyDir" in volume:
                pass
            elif "hostPath" in volume:
                volumes[name] = (Path(volume["hostPath"]["path"]), None)
                continue
            elif source := volume.get("persistentVolumeClaim"):
                volumes[name] = (self._claim_directory(name, source["claimName"]), None)
                continue
            elif source := volume.get("secret"):
                self._write_keys(target, "Secret", source["secretName"], source)
            elif source := volume.get("configMap"):
                self._write_keys(target, "ConfigMap", source["name"], source)
            elif source := volume.get("downwardAPI"):
                self._write_downward(target, source)
            elif source := volume.get("projected"):
                for item in source.get("sources") or []:
                    if sa := item.get("serviceAccountToken"):
                        path = target / sa["path"]
                        path.write_text(self._service_account_token(sa))
                        token_file = str(path)
                    elif ref := item.get("secret"):
                        self._write_keys(target, "Secret", ref["name"], ref)
                    elif ref := item.get("configMap"):
                        self._write_keys(target, "ConfigMap", ref["name"], ref)
                    elif ref := item.get("downwardAPI"):
                        self._write_downward(target, ref)
                    elif "clusterTrustBundle" in item or "podCertificate" in item:
                        raise PodSpecError(
                            "CreateContainerConfigError",
                            f"volume {name}: projected source not supported locally",
                        )
            else:
                kinds = sorted(set(volume) - {"name"})
                raise PodSpecError(
                    "CreateContainerConfigError",
                    f"volume {name}: {', '.join(kinds)} volumes are not supported by the local kubelet",
                )
            volumes[name] = (target, token_file)
        return volumes

    def _claim_directory(self, volume: str, claim_name: str) -> Path:
        """The directory of the local or hostPath PersistentVolume bound to ``claim_name``.

        Pods share the host's filesystem here, so the claim's mount path resolves to the
        volume's own directory (as a bind mount would); read-only is not enforced locally.
        """
        core = self.kubelet.core
        try:
            claim = core.api_client.sanitize_for_serialization(
                core.read_namespaced_persistent_volume_claim(claim_name, self.key[0])
            )
        except ApiException as error:
            if error.status == 404:
                raise PodSpecError(
                    "CreateContainerConfigError",
                    f"volume {volume}: persistentvolumeclaim {claim_name!r} not found",
                ) from None
            raise
        bound_to = claim["spec"].get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not bound_to:
            raise PodSpecError(
                "CreateContainerConfigError",
                f"volume {volume}: persistentvolumeclaim {claim_name!r} is not bound",
            )
        spec = core.api_client.sanitize_for_serialization(core.read_persistent_volume(bound_to))["spec"]
        path = (spec.get("local") or spec.get("hostPath") or {}).get("path")
        if not path:
            raise PodSpecError(
                "CreateContainerConfigError",
                f"volume {volume}: PersistentVolume {bound_to} is neither local nor "
                "hostPath; the local kubelet mounts only those",
            )
        return Path(path)

    def _write_keys(self, target: Path, kind: str, name: str, source: Mapping) -> None:
        data = self._lookup(kind, name)
        if data is None:
            if source.get("optional"):
                return
            raise PodSpecError("CreateContainerConfigError", f"{kind.lower()} {name!r} not found")
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                raise PodSpecError(
                    "CreateContainerConfigError", f"{kind.lower()} {name!r} has no key {item['key']!r}"
                )
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)) & 0o777)

    def _write_downward(self, target: Path, source: Mapping) -> None:
        for item in source.get("items") or []:
            if ref := item.get("fieldRef"):
                value = field_ref(self.pod, ref["fieldPath"], self.pod_ip or "", HOST_IP)
                (target / item["path"]).write_text(value)

    def _service_account_token(self, source: Mapping) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[source["audience"]] if source.get("audience") else [],
                expiration_seconds=max(
                    int(source.get("expirationSeconds", SA_TOKEN_SECONDS)), SA_TOKEN_SECONDS
                ),
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=meta["name"], uid=meta["uid"]
                ),
            )
        )
        response = self.kubelet.core.create_namespaced_service_account_token(
            spec.get("serviceAccountName", "default"), meta["namespace"], request
        )
        if response.status is None:
            raise PodSpecError("CreateContainerConfigError", "TokenRequest returned no token")
        return str(response.status.token)

    def _container(self, spec: Mapping, volumes: dict[str, tuple[Path, str | None]]) -> Container:
        mounts: dict[str, str] = {}
        token_file = None
        for mount in spec.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise PodSpecError(
                    "CreateContainerConfigError", f"volumeMount {mount['name']} names no volume"
                )
            host_dir, token = volumes[mount["name"]]
            mounts[mount["mountPath"]] = str(host_dir / mount.get("subPath", ""))
            token_file = token_file or token
        base = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "HOME": str(self.dir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": self.key[1],
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.kubelet.api_port),
        }
        base.update(self._simulated_gpu_env(spec))
        # Only what the pod spec says is in the container's view of the filesystem and gets
        # its mount paths rewritten; the stand-in's own values (PATH, HOME, KUBECONFIG) are
        # host paths already, and may well lie under a mount path such as /tmp.
        spec_env = container_env(self.pod, spec, self.pod_ip or "", HOST_IP, self._lookup, base)
        env = {
            **base,
            **{k: translate_paths(v, mounts) for k, v in spec_env.items() if spec_env.get(k) != base.get(k)},
        }
        argv = [
            translate_paths(expand(a, spec_env), mounts)
            for a in [*(spec.get("command") or []), *(spec.get("args") or [])]
        ]
        if token_file:
            kubeconfig = write_kubeconfig(
                self.dir / f"{spec['name']}.kubeconfig",
                self.kubelet.server,
                self.kubelet.ca_cert,
                "serviceaccount",
                token=Path(token_file).read_text(),
            )
            env["KUBECONFIG"] = str(kubeconfig)
        if not spec.get("command"):
            raise PodSpecError(
                "CreateContainerConfigError",
                f"container {spec['name']}: the local kubelet runs a container's `command`; "
                "image entrypoints are not available here",
            )
        resolved = shutil.which(argv[0], path=env.get("PATH"))
        if resolved is None:
            raise PodSpecError(
                "CreateContainerConfigError",
                f"container {spec['name']}: executable {argv[0]!r} not found on PATH",
            )
        argv[0] = resolved
        cwd = Path(translate_paths(spec["workingDir"], mounts)) if spec.get("workingDir") else self.dir
        for probe_key in ("startupProbe", "readinessProbe", "livenessProbe"):
            if exec_ := (spec.get(probe_key) or {}).get("exec"):
                exec_["command"] = [translate_paths(expand(a, spec_env), mounts) for a in exec_["command"]]
        return Container(spec, argv, env, cwd, self.dir / f"{spec['name']}.log")

    def _simulated_gpu_env(self, spec: Mapping) -> dict[str, str]:
        """What a device plugin would expose: the node's GPU class, for the GPUs the container asked for."""
        node = self.kubelet.nodes[self.pod["spec"]["nodeName"]]
        limits = (spec.get("resources") or {}).get("limits") or {}
        wanted = int(limits.get(labels.GPU_RESOURCE, 0) or 0)
        if not wanted or not node.gpu_count:
            return {}
        return {
            "GPUFLEET_SIMULATED_GPU_PRODUCT": node.gpu_product or "Simulated-GPU",
            "GPUFLEET_SIMULATED_GPU_MEMORY": f"{node.gpu_memory_mib}Mi",
            "GPUFLEET_SIMULATED_GPU_COUNT": str(wanted),
        }

    # -- status -----------------------------------------------------------------------------
    def _report_config_error(self, error: PodSpecError) -> None:
        if not any(c.state.waiting == (error.reason, str(error)) for c in self.containers):
            log.warning("pod %s/%s: %s", *self.key, error)
        self.containers = []
        for spec in self.pod["spec"]["containers"]:
            container = Container(spec, [], {}, self.dir, Path(os.devnull))
            container.state.waiting = (error.reason, str(error))
            self.containers.append(container)
        self._push_status()

    def _push_status(self) -> None:
        status = pod_status(
            [c.state for c in self.containers],
            self.pod["spec"].get("restartPolicy", "Always"),
            self.pod_ip,
            HOST_IP,
            self.start_time,
            now_rfc3339(),
            self.last_status,
        )
        if status == self.last_status:
            return
        try:
            self.kubelet.core.patch_namespaced_pod_status(
                self.key[1],
                self.key[0],
                {"metadata": {"uid": self.uid}, "status": status},
                _content_type="application/merge-patch+json",
            )
            self.last_status = status
        except ApiException as error:
            if error.status not in (404, 409, 422):
                raise
            log.debug("pod %s/%s status not written: %s", *self.key, error.reason)


class LocalKubelet:
    """Registers the simulated nodes, keeps them Ready, and runs their pods."""

    def __init__(
        self,
        kubeconfig: Path,
        nodes: list[simnodes.SimNode],
        state_dir: Path,
        pod_network: ipaddress.IPv4Network,
    ) -> None:
        configuration = client.Configuration()
        config.load_kube_config(str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 64
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.server = configuration.host
        self.api_port = int(self.server.rsplit(":", 1)[1])
        self.ca_cert = Path(str(configuration.ssl_ca_cert))
        self.nodes = {n.name: n for n in nodes}
        self.state_dir = state_dir
        self.ips = IPPool(pod_network)
        self.runners: dict[tuple[str, str], PodRunner] = {}
        self.terminating: set[tuple[tuple[str, str], str]] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def is_simulated_only(self, node_name: str) -> bool:
        return self.nodes[node_name].simulated_only

    def pod_is_terminating(self, key: tuple[str, str], uid: str) -> bool:
        with self.lock:
            return (key, uid) in self.terminating

    def runner_done(self, runner: PodRunner) -> None:
        with self.lock:
            if self.runners.get(runner.key) is runner:
                del self.runners[runner.key]
            self.terminating.discard((runner.key, runner.uid))

    def register_nodes(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: simnodes.register(self.core, n), self.nodes.values()))
            list(pool.map(lambda n: simnodes.renew_lease(self.coordination, n), self.nodes))

    def renew_leases(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            while not self.stopping.wait(LEASE_RENEW_SECONDS):
                try:
                    list(pool.map(lambda n: simnodes.renew_lease(self.coordination, n), self.nodes))
                except Exception:
                    log.exception("lease renewal failed")

    def handle(self, kind: str, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") not in self.nodes:
            return
        key, uid = (meta["namespace"], meta["name"]), meta["uid"]
        with self.lock:
            runner = self.runners.get(key)
            if runner is not None and runner.uid != uid:  # same name, new pod: the old one is gone
                runner.request_stop(0)
                runner = None
            if kind == "DELETED":
                if runner:
                    runner.request_stop(0)
                return
            if meta.get("deletionTimestamp"):
                self.terminating.add((key, uid))
                if runner:
                    runner.request_stop(float(meta.get("deletionGracePeriodSeconds", 30)))
                    return
                runner = PodRunner(self, pod)  # nothing runs: let it finish the deletion
                runner.stop_requested.set()
                self.runners[key] = runner
                runner.start()
                return
            if runner is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                runner = PodRunner(self, pod)
                self.runners[key] = runner
                runner.start()

    def watch_pods(self) -> None:
        resource_version = None
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    listing = self.core.list_pod_for_all_namespaces(
                        field_selector="spec.nodeName!=", _preload_content=False
                    )
                    body = json.loads(listing.data)  # type: ignore[attr-defined]  # raw response
                    for pod in body["items"]:
                        self.handle("ADDED", pod)
                    resource_version = body["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector="spec.nodeName!=",
                    resource_version=resource_version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    raw = event["raw_object"]
                    resource_version = raw["metadata"].get("resourceVersion", resource_version)
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "ERROR":
                        resource_version = None
                        break
                    self.handle(event["type"], raw)
            except ApiException as error:
                if error.status == 410:
                    resource_version = None
                    continue
                log.warning("pod watch: %s", error)
                time.sleep(1)
            except Exception as error:
                log.warning("pod watch: %s", error)
                time.sleep(1)

    def run(self) -> None:
        self.register_nodes()
        threading.Thread(target=self.renew_leases, name="leases", daemon=True).start()
        log.info("local kubelet ready: %d nodes", len(self.nodes))
        self.watch_pods()

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.request_stop(2)
        for runner in runners:
            runner.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gpufleet local kubelet stand-in")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--fleet", type=Path, help="JSON list of simulated nodes (default: the built-in fleet)"
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    nodes = simnodes.load_fleet(args.fleet) if args.fleet else list(simnodes.DEFAULT_FLEET)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    pod_network = podnetwork.claim()  # held until this process exits
    log.info("pod addresses from %s", pod_network.network)
    kubelet = LocalKubelet(args.kubeconfig, nodes, args.state_dir, pod_network.network)

    def on_signal(signum, _frame):
        kubelet.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
