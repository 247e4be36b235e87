"""Pure parts of the kubelet stand-in: how a pod spec becomes a process, and its status.

Pods are plain dicts as the API server serves them (camelCase keys).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest stays."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(substitute, value)


class PodSpecError(ValueError):
    """The pod cannot be run as written (a missing Secret key, an unsupported volume...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def field_ref(pod: Mapping, path: str, pod_ip: str, host_ip: str) -> str:
    """Downward API ``fieldRef.fieldPath`` values."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise PodSpecError("CreateContainerConfigError", f"unsupported fieldRef.fieldPath {path!r}")


Lookup = Callable[[str, str], Mapping[str, str] | None]  # (kind, name) -> data or None


def container_env(
    pod: Mapping, container: Mapping, pod_ip: str, host_ip: str, lookup: Lookup, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment Kubernetes would give ``container`` (envFrom, then env, with expansion)."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if ref := source.get(key):
                data = lookup(kind, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise PodSpecError(
                        "CreateContainerConfigError", f"{kind.lower()} {ref['name']!r} not found"
                    )
                env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if ref := source.get("fieldRef"):
            env[name] = field_ref(pod, ref["fieldPath"], pod_ip, host_ip)
        elif ref := source.get("resourceFieldRef"):
            env[name] = _resource_value(container, ref["resource"])
        else:
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if ref := source.get(key):
                    data = lookup(kind, ref["name"])
                    if data is None or ref["key"] not in data:
                        if ref.get("optional"):
                            break
                        raise PodSpecError(
                            "CreateContainerConfigError",
                            f"{kind.lower()} {ref['name']!r} key {ref['key']!r} not found "
                            f"(env {name} of container {container['name']})",
                        )
                    env[name] = data[ref["key"]]
                    break
    return env


def _resource_value(container: Mapping, resource: str) -> str:
    kind, _, name = resource.partition(".")
    return str(((container.get("resources") or {}).get(kind) or {}).get(name, "0"))


def translate_paths(value: str, mounts: Mapping[str, str]) -> str:
    """Rewrites container paths under a volume mount to the host directory backing it.

    Processes here share the host's filesystem, so ``/var/run/secrets/x/token`` in an
    argument or env value becomes ``<pod dir>/volumes/x/token``. Longest mount first.
    """
    if not mounts:
        return value
    # One pass over all mounts (longest first), so a rewritten path is never rewritten again.
    by_path = {path.rstrip("/") or "/": host for path, host in mounts.items()}
    alternatives = "|".join(re.escape(p) for p in sorted(by_path, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|$|[\s:;,'\"])")
    return pattern.sub(lambda match: by_path[match.group(1)], value)


@dataclass
class ContainerState:
    """What the stand-in knows of one container, in the shape it reports."""

    name: str
    image: str = ""
    restart_count: int = 0
    ready: bool = False
    running_since: str | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: dict | None = None
    last_terminated: dict | None = None
    extra: dict = field(default_factory=dict)

    def status(self) -> dict:
        state: dict
        if self.running_since is not None:
            state = {"running": {"startedAt": self.running_since}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": f"local://{self.name}",
            "ready": self.ready,
            "started": self.running_since is not None,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.last_terminated:
            status["lastState"] = {"terminated": self.last_terminated}
        return status


def pod_phase(containers: list[ContainerState], restart_policy: str) -> str:
    """Pod phase from container states, as the kubelet computes it."""
    if any(c.running_since is not None for c in containers):
        return "Running"
    if containers and all(c.terminated is not None for c in containers):
        codes = [c.terminated["exitCode"] for c in containers if c.terminated]
        if all(code == 0 for code in codes):
            return "Succeeded" if restart_policy != "Always" else "Running"
        return "Failed" if restart_policy == "Never" else "Running"
    return "Pending"


def pod_status(
    containers: list[ContainerState],
    restart_policy: str,
    pod_ip: str | None,
    host_ip: str,
    start_time: str,
    now: str,
    previous: Mapping | None = None,
) -> dict:
    """The pod ``status`` the stand-in writes; keeps lastTransitionTime of unchanged conditions."""
    ready = bool(containers) and all(c.ready for c in containers)
    phase = pod_phase(containers, restart_policy)
    old = {c["type"]: c for c in (previous or {}).get("conditions") or []}

    def condition(kind: str, value: bool) -> dict:
        status = "True" if value else "False"
        since = old[kind]["lastTransitionTime"] if kind in old and old[kind]["status"] == status else now
        return {"type": kind, "status": status, "lastTransitionTime": since, "lastProbeTime": None}

    status = {
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "conditions": [
            condition("PodReadyToStartContainers", pod_ip is not None),
            condition("Initialized", True),
            condition("ContainersReady", ready),
            condition("Ready", ready),
            condition("PodScheduled", True),
        ],
        "containerStatuses": [c.status() for c in containers],
        # No qosClass: the API server sets it at creation and refuses any change to it.
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status
