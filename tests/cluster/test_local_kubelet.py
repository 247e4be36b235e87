"""The kubelet stand-in runs pods as processes: env, probes, exit codes, deletion, SA identity."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from gpufleet.localcluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet]


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def pod(name: str, command: list[str], **spec_fields) -> client.V1Pod:
    container_fields = {
        k: spec_fields.pop(k)
        for k in ("startup_probe", "readiness_probe", "liveness_probe", "env", "volume_mounts")
        if k in spec_fields
    }
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_selector={"kubernetes.io/hostname": "cpu-0"},
            termination_grace_period_seconds=2,
            containers=[
                client.V1Container(name="main", image="busybox:1.36", command=command, **container_fields)
            ],
            **spec_fields,
        ),
    )


def read(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    return core.read_namespaced_pod(name, namespace)


def pod_when(
    core: client.CoreV1Api, namespace: str, name: str, predicate, what: str, timeout: float = 30
) -> client.V1Pod:
    """The pod once ``predicate`` holds for it (its status in the message if it never does)."""
    return wait_for(
        lambda: read(core, namespace, name), predicate, timeout, what=what, describe=lambda p: str(p.status)
    )


def finished(core: client.CoreV1Api, namespace: str, name: str, timeout: float) -> client.V1Pod:
    """The pod once it has Succeeded or Failed."""
    return pod_when(
        core,
        namespace,
        name,
        lambda p: p.status.phase in ("Succeeded", "Failed"),
        f"pod {name} to finish",
        timeout=timeout,
    )


def test_pod_runs_with_its_env_becomes_ready_through_probe_and_is_killed_on_delete(core, namespace):
    marker = f"marker-{uuid.uuid4().hex}"
    # An HTTP server bound to the pod's own loopback IP, found through the downward API.
    serve = (
        "import http.server, sys; "
        "http.server.test(http.server.SimpleHTTPRequestHandler, port=8080, bind=sys.argv[1])"
    )
    server = [sys.executable, "-c", serve, "$(POD_IP)", marker]
    core.create_namespaced_pod(
        namespace,
        pod(
            "web",
            server,
            env=[
                client.V1EnvVar(
                    name="POD_IP",
                    value_from=client.V1EnvVarSource(
                        field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
                    ),
                )
            ],
            readiness_probe=client.V1Probe(
                http_get=client.V1HTTPGetAction(path="/", port=8080), period_seconds=1
            ),
        ),
    )
    ready = pod_when(
        core,
        namespace,
        "web",
        lambda p: any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []),
        "web pod Ready",
    )
    assert ready.status.pod_ip.startswith("127.") and ready.status.pod_ip != "127.0.0.1"
    assert ready.status.container_statuses[0].state.running is not None
    pids = processes_with(marker)
    assert pids, "the pod's process should be running on this machine"

    core.delete_namespaced_pod("web", namespace)

    def pod_gone() -> bool:
        try:
            read(core, namespace, "web")
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(pod_gone, bool, 30, what="pod deleted")
    assert processes_with(marker) == []


def test_readiness_probe_failing_keeps_pod_unready(core, namespace):
    core.create_namespaced_pod(
        namespace,
        pod(
            "deaf",
            ["sleep", "300"],
            readiness_probe=client.V1Probe(tcp_socket=client.V1TCPSocketAction(port=9), period_seconds=1),
        ),
    )
    running = pod_when(core, namespace, "deaf", lambda p: p.status.phase == "Running", "deaf pod Running")
    assert running.status.container_statuses[0].ready is False
    pod_when(
        core,
        namespace,
        "deaf",
        lambda p: p.status.container_statuses[0].ready is False,
        "still unready after probes",
        timeout=3,
    )


def exists(path: Path, **probe_fields) -> client.V1Probe:
    """A probe that passes once ``path`` exists, checked every second."""
    return client.V1Probe(
        _exec=client.V1ExecAction(command=["test", "-f", str(path)]), period_seconds=1, **probe_fields
    )


def test_liveness_waits_for_the_startup_probe(core, namespace, tmp_path):
    up = tmp_path / "up"
    core.create_namespaced_pod(
        namespace,
        pod(
            "slow-start",
            ["sh", "-c", f"sleep 4; touch {up}; sleep 300"],
            startup_probe=exists(up, failure_threshold=30),
            # Alone, this would kill the container at its first probe, before the file exists.
            liveness_probe=exists(up, failure_threshold=1),
        ),
    )
    running = pod_when(
        core, namespace, "slow-start", lambda p: p.status.phase == "Running", "slow-start Running"
    )
    assert not up.exists()
    assert running.status.container_statuses[0].ready is False  # not ready before it has started
    started = pod_when(
        core,
        namespace,
        "slow-start",
        lambda p: p.status.container_statuses[0].ready,
        "slow-start ready once started",
    )
    assert started.status.container_statuses[0].restart_count == 0


def test_a_container_that_never_starts_is_restarted(core, namespace, tmp_path):
    core.create_namespaced_pod(
        namespace,
        pod(
            "never-starts",
            ["sleep", "300"],
            startup_probe=exists(tmp_path / "never", failure_threshold=2),
            liveness_probe=client.V1Probe(_exec=client.V1ExecAction(command=["true"]), period_seconds=1),
        ),
    )
    restarted = pod_when(
        core,
        namespace,
        "never-starts",
        lambda p: bool(p.status.container_statuses) and p.status.container_statuses[0].restart_count >= 1,
        "never-starts restarted by its startup probe",
    )
    assert restarted.status.container_statuses[0].ready is False


def test_non_zero_exit_code_is_reported(core, namespace):
    core.create_namespaced_pod(namespace, pod("fails", ["sh", "-c", "exit 3"], restart_policy="Never"))
    failed = pod_when(core, namespace, "fails", lambda p: p.status.phase == "Failed", "pod Failed")
    terminated = failed.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3 and terminated.reason == "Error"


def test_restart_policy_always_restarts_and_counts(core, namespace):
    core.create_namespaced_pod(namespace, pod("crashy", ["sh", "-c", "exit 1"]))
    crashed = pod_when(
        core,
        namespace,
        "crashy",
        lambda p: bool(p.status.container_statuses) and p.status.container_statuses[0].restart_count >= 2,
        "two restarts",
    )
    assert crashed.status.container_statuses[0].last_state.terminated.exit_code == 1


def test_missing_secret_is_reported_not_run(core, namespace):
    core.create_namespaced_pod(
        namespace,
        pod(
            "nosecret",
            ["sleep", "300"],
            env=[
                client.V1EnvVar(
                    name="TOKEN",
                    value_from=client.V1EnvVarSource(
                        secret_key_ref=client.V1SecretKeySelector(name="absent", key="token")
                    ),
                )
            ],
        ),
    )
    waiting = pod_when(
        core,
        namespace,
        "nosecret",
        lambda p: bool(p.status.container_statuses) and p.status.container_statuses[0].state.waiting,
        "container waiting with a reason",
    )
    state = waiting.status.container_statuses[0].state.waiting
    assert state.reason == "CreateContainerConfigError" and "absent" in state.message


RBAC_PROBE = textwrap.dedent("""
    import sys
    from kubernetes import client, config
    config.load_kube_config()
    core = client.CoreV1Api()
    namespace = sys.argv[1]
    core.list_namespaced_config_map(namespace)          # granted by the Role
    try:
        core.list_namespaced_secret(namespace)          # not granted
    except client.ApiException as error:
        sys.exit(0 if error.status == 403 else 20)
    sys.exit(10)                                        # listing Secrets must be refused
""")


def test_pod_program_acts_with_its_service_account_and_rbac_refuses_the_rest(cluster, core, namespace):
    rbac = client.RbacAuthorizationV1Api(cluster.api_client())
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmap-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
        ),
    )
    core.create_namespaced_pod(
        namespace,
        pod(
            "rbac-probe",
            [sys.executable, "-c", RBAC_PROBE, namespace],
            service_account_name="reader",
            restart_policy="Never",
        ),
    )
    done = finished(core, namespace, "rbac-probe", 60)
    assert done.status.phase == "Succeeded", done.status.container_statuses[0].state.terminated


def test_pod_without_token_automount_gets_no_credentials(core, namespace):
    script = "import os, sys; sys.exit(0 if 'KUBECONFIG' not in os.environ else 1)"
    core.create_namespaced_pod(
        namespace,
        pod(
            "no-token",
            [sys.executable, "-c", script],
            automount_service_account_token=False,
            restart_policy="Never",
        ),
    )
    done = finished(core, namespace, "no-token", 30)
    assert done.status.phase == "Succeeded"


def test_mount_paths_are_not_rewritten_into_the_stand_ins_own_paths(core, namespace):
    """A pod mounting a folder that holds this machine's programs (say /tmp) still finds them."""
    top = "/" + Path(sys.executable).parts[1]  # e.g. /work, or /tmp for a checkout under /tmp
    script = (
        "import os, sys; first = os.environ['PATH'].split(os.pathsep)[0]; "
        "sys.exit(0 if os.path.isfile(os.path.join(first, 'gpufleet-worker')) else 7)"
    )
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="tmp-mount"),
            spec=client.V1PodSpec(
                node_selector={"kubernetes.io/hostname": "cpu-0"},
                restart_policy="Never",
                volumes=[client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource())],
                containers=[
                    client.V1Container(
                        name="main",
                        image="busybox:1.36",
                        command=["python", "-c", script],
                        volume_mounts=[client.V1VolumeMount(name="scratch", mount_path=top)],
                    )
                ],
            ),
        ),
    )
    done = finished(core, namespace, "tmp-mount", 30)
    assert done.status.phase == "Succeeded", done.status.container_statuses


def bound_claim(core: client.CoreV1Api, namespace: str, name: str, directory: Path) -> None:
    """A hostPath PersistentVolume and a claim the real PV controller binds to it."""
    volume = f"{namespace}-{name}"
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=volume),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadOnlyMany"],
                storage_class_name="",
                host_path=client.V1HostPathVolumeSource(path=str(directory)),
                claim_ref=client.V1ObjectReference(namespace=namespace, name=name),
            ),
        )
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadOnlyMany"],
                storage_class_name="",
                volume_name=volume,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase,
        lambda phase: phase == "Bound",
        30,
        what=f"claim {name} bound by the PV controller",
    )


def test_a_claim_bound_to_a_host_path_volume_is_mounted_where_the_pod_says(core, namespace, tmp_path):
    (tmp_path / "weights" / "sd15").mkdir(parents=True)
    (tmp_path / "weights" / "sd15" / "model_index.json").write_text("tiny")
    bound_claim(core, namespace, "weights", tmp_path / "weights")
    mount = client.V1VolumeMount(name="w", mount_path="/var/lib/models/weights", read_only=True)
    core.create_namespaced_pod(
        namespace,
        pod(
            "reader",
            ["grep", "-q", "tiny", "/var/lib/models/weights/sd15/model_index.json"],
            restart_policy="Never",
            volume_mounts=[mount],
            volumes=[
                client.V1Volume(
                    name="w",
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name="weights", read_only=True
                    ),
                )
            ],
        ),
    )
    done = finished(core, namespace, "reader", timeout=60)
    assert done.status.phase == "Succeeded", done.status


def test_a_missing_claim_is_reported_not_run(core, namespace):
    manifest = pod(
        "noclaim",
        ["sleep", "300"],
        node_name="cpu-0",  # past the scheduler, which would hold the pod back
        volume_mounts=[client.V1VolumeMount(name="w", mount_path="/weights")],
        volumes=[
            client.V1Volume(
                name="w",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name="absent"),
            )
        ],
    )
    manifest.spec.node_selector = None
    core.create_namespaced_pod(namespace, manifest)
    waiting = pod_when(
        core,
        namespace,
        "noclaim",
        lambda p: bool(p.status.container_statuses) and p.status.container_statuses[0].state.waiting,
        "container waiting with a reason",
    )
    state = waiting.status.container_statuses[0].state.waiting
    assert state.reason == "CreateContainerConfigError"
    assert state.message == "volume w: persistentvolumeclaim 'absent' not found"
