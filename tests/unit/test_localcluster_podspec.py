"""Pure parts of the kubelet stand-in: env resolution, expansion, path translation, phase."""

from __future__ import annotations

import pytest

from gpufleet.localcluster.podspec import (
    ContainerState,
    PodSpecError,
    container_env,
    expand,
    pod_phase,
    pod_status,
    translate_paths,
)

POD = {
    "metadata": {"name": "w-0", "namespace": "studio", "uid": "u-1", "labels": {"pool": "sd15"}},
    "spec": {"nodeName": "gpu-a100-0", "serviceAccountName": "default"},
}


def lookup(kind: str, name: str):
    return {("Secret", "token"): {"token": "s3cr3t"}, ("ConfigMap", "cfg"): {"A": "1", "B": "2"}}.get(
        (kind, name)
    )


def test_expand_follows_kubernetes_rules():
    env = {"POD_IP": "127.1.0.7", "PORT": "8080"}
    assert expand("--host=$(POD_IP):$(PORT)", env) == "--host=127.1.0.7:8080"
    assert expand("$(UNDEFINED) stays", env) == "$(UNDEFINED) stays"
    assert expand("$$(POD_IP) is escaped", env) == "$(POD_IP) is escaped"


def test_container_env_resolves_every_source_in_order():
    container = {
        "name": "main",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POOL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['pool']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}},
            {"name": "URL", "value": "http://$(POD_IP):8080"},
        ],
    }
    env = container_env(POD, container, "127.1.0.9", "127.0.0.1", lookup, {"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "CFG_A": "1",
        "CFG_B": "2",
        "POD_IP": "127.1.0.9",
        "NAME": "w-0",
        "POOL": "sd15",
        "TOKEN": "s3cr3t",
        "URL": "http://127.1.0.9:8080",
    }


@pytest.mark.parametrize(
    "env_var",
    [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}},
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "token", "key": "absent"}}},
        {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nonsense"}}},
    ],
)
def test_container_env_refuses_what_cannot_be_resolved(env_var):
    with pytest.raises(PodSpecError) as error:
        container_env(POD, {"name": "main", "env": [env_var]}, "127.1.0.9", "127.0.0.1", lookup, {})
    assert error.value.reason == "CreateContainerConfigError"


def test_optional_missing_secret_is_skipped():
    env_var = {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}}
    assert "X" not in container_env(POD, {"name": "main", "env": [env_var]}, "", "", lookup, {})


def test_translate_paths_rewrites_only_whole_mount_prefixes():
    mounts = {"/var/run/secrets/gpufleet": "/pods/a/volumes/token", "/var/run": "/pods/a/volumes/run"}
    assert (
        translate_paths("--token-file=/var/run/secrets/gpufleet/token", mounts)
        == "--token-file=/pods/a/volumes/token/token"
    )
    assert translate_paths("/var/run/other", mounts) == "/pods/a/volumes/run/other"
    assert translate_paths("/var/running", mounts) == "/var/running"
    assert translate_paths("/opt/var/run/x", mounts) == "/opt/var/run/x"


def running(name="main"):
    return ContainerState(name=name, running_since="t", waiting=None, ready=True)


def terminated(code, name="main"):
    return ContainerState(name=name, waiting=None, terminated={"exitCode": code})


@pytest.mark.parametrize(
    ("containers", "policy", "phase"),
    [
        ([running()], "Always", "Running"),
        ([terminated(0)], "Never", "Succeeded"),
        ([terminated(3)], "Never", "Failed"),
        ([terminated(3)], "Always", "Running"),  # about to restart
        ([terminated(0), running("b")], "Never", "Running"),
        ([ContainerState(name="main")], "Always", "Pending"),
    ],
)
def test_pod_phase(containers, policy, phase):
    assert pod_phase(containers, policy) == phase


def test_pod_status_keeps_transition_time_of_unchanged_conditions():
    first = pod_status([running()], "Always", "127.1.0.2", "127.0.0.1", "t0", "t1")
    second = pod_status([running()], "Always", "127.1.0.2", "127.0.0.1", "t0", "t2", previous=first)
    ready = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready == {"type": "Ready", "status": "True", "lastTransitionTime": "t1", "lastProbeTime": None}
    not_ready = pod_status([terminated(1)], "Always", "127.1.0.2", "127.0.0.1", "t0", "t3", previous=second)
    assert next(c for c in not_ready["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == "t3"


def test_translate_paths_never_rewrites_a_rewritten_path():
    # The pod's own directory lives under /tmp, which the pod also mounts (emptyDir).
    mounts = {"/var/run/token": "/tmp/pods/a/volumes/token", "/tmp": "/tmp/pods/a/volumes/tmp"}
    assert (
        translate_paths("--token-file=/var/run/token/t", mounts) == "--token-file=/tmp/pods/a/volumes/token/t"
    )
    assert translate_paths("/tmp/x", mounts) == "/tmp/pods/a/volumes/tmp/x"
