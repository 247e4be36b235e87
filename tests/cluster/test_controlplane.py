"""The local control plane is a real Kubernetes: CRDs, status subresource, watch, scheduler, GC."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client, watch

from gpufleet import labels
from gpufleet.localcluster import simnodes
from gpufleet.localcluster.waiting import wait_for

pytestmark = pytest.mark.cluster

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.gpufleet.io"},
    "spec": {
        "group": "test.gpufleet.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def test_startup_figure_is_reported(cluster):
    print(f"control plane startup: {cluster.control_plane.startup_seconds:.1f}s")
    assert cluster.control_plane.startup_seconds is not None
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_throwaway_crd_create_get_watch_and_status_subresource(cluster, namespace):
    api = cluster.api_client()
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as error:
        assert error.status == 409  # created by an earlier run in this session
    wait_for(
        lambda: extensions.read_custom_resource_definition("widgets.test.gpufleet.io"),
        lambda crd: any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []),
        30,
        what="widgets CRD Established",
    )
    custom = client.CustomObjectsApi(api)
    args = ("test.gpufleet.io", "v1", namespace, "widgets")
    wait_for(lambda: custom.list_namespaced_custom_object(*args), bool, 30, what="widgets served")

    # Schema validation is the API server's: size 0 violates minimum 1.
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(
            *args,
            {
                "apiVersion": "test.gpufleet.io/v1",
                "kind": "Widget",
                "metadata": {"name": "bad"},
                "spec": {"size": 0},
            },
        )
    assert refused.value.status == 422 and "spec.size" in refused.value.body

    custom.create_namespaced_custom_object(
        *args,
        {
            "apiVersion": "test.gpufleet.io/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 2},
        },
    )
    created = custom.get_namespaced_custom_object(*args, "w1")
    assert created["spec"] == {"size": 2}

    events: list[dict] = []
    seen_status = threading.Event()

    def watch_widgets() -> None:
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            *args,
            resource_version=created["metadata"]["resourceVersion"],
            timeout_seconds=20,
        ):
            events.append(event)
            if (event["object"].get("status") or {}).get("phase") == "Ready":
                seen_status.set()
                stream.stop()

    watcher = threading.Thread(target=watch_widgets, daemon=True)
    watcher.start()
    # Through the status subresource, status changes and spec changes are ignored.
    custom.patch_namespaced_custom_object_status(
        *args, "w1", {"status": {"phase": "Ready"}, "spec": {"size": 9}}
    )
    assert seen_status.wait(20), f"watch did not deliver the status change; saw {events}"
    after = custom.get_namespaced_custom_object(*args, "w1")
    assert after["status"] == {"phase": "Ready"}
    assert after["spec"] == {"size": 2}
    assert events[-1]["type"] == "MODIFIED"


def gpu_pod(name: str, gpus: int, min_memory_mib: int | None = None) -> client.V1Pod:
    affinity = None
    if min_memory_mib is not None:
        affinity = client.V1Affinity(
            node_affinity=client.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
                    node_selector_terms=[
                        client.V1NodeSelectorTerm(
                            match_expressions=[
                                client.V1NodeSelectorRequirement(
                                    key=labels.GPU_MEMORY_MIB, operator="Gt", values=[str(min_memory_mib)]
                                )
                            ]
                        )
                    ]
                )
            )
        )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            affinity=affinity,
            tolerations=[client.V1Toleration(key=labels.GPU_RESOURCE, operator="Exists")],
            containers=[
                client.V1Container(
                    name="main",
                    image="busybox:1.36",
                    command=["sleep", "3600"],
                    resources=client.V1ResourceRequirements(limits={labels.GPU_RESOURCE: str(gpus)}),
                )
            ],
            termination_grace_period_seconds=1,
        ),
    )


def test_scheduler_places_gpu_pod_only_where_vram_suffices(cluster, core, namespace):
    core.create_namespaced_pod(namespace, gpu_pod("needs-20g", 1, min_memory_mib=20000))
    pod = wait_for(
        lambda: core.read_namespaced_pod("needs-20g", namespace),
        lambda p: bool(p.spec.node_name),
        30,
        what="pod bound",
        describe=lambda p: str(p.status.conditions),
    )
    node = core.read_node(pod.spec.node_name)
    assert int(node.metadata.labels[labels.GPU_MEMORY_MIB]) > 20 * 1024
    wait_for(
        lambda: core.read_namespaced_pod("needs-20g", namespace),
        lambda p: p.status.phase == "Running",
        30,
        what="pod Running",
        describe=lambda p: str(p.status),
    )


@pytest.mark.parametrize(("gpus", "min_memory_mib"), [(1, 200_000), (16, None)])
def test_scheduler_leaves_impossible_gpu_pod_pending_unschedulable(core, namespace, gpus, min_memory_mib):
    core.create_namespaced_pod(namespace, gpu_pod("too-big", gpus, min_memory_mib))

    def unschedulable(pod: client.V1Pod) -> bool:
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    pod = wait_for(
        lambda: core.read_namespaced_pod("too-big", namespace),
        unschedulable,
        30,
        what="PodScheduled=False/Unschedulable",
        describe=lambda p: str(p.status.conditions),
    )
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_garbage_collector_deletes_pod_whose_owner_is_deleted(core, namespace):
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    pod = gpu_pod("owned", 1)
    pod.metadata.owner_references = [
        client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    ]
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("owned", namespace),
        lambda p: p.status.phase == "Running",
        30,
        what="owned pod Running",
        describe=lambda p: str(p.status.phase),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("owned", namespace)
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, bool, 60, what="garbage collector to delete the owned pod")


@pytest.mark.localkubelet
def test_simulated_only_nodes_run_many_pods_without_processes(cluster, namespace):
    apps = client.AppsV1Api(cluster.api_client())
    replicas = 300
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="many"),
            spec=client.V1DeploymentSpec(
                replicas=replicas,
                selector=client.V1LabelSelector(match_labels={"app": "many"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "many"}),
                    spec=client.V1PodSpec(
                        tolerations=[client.V1Toleration(operator="Exists")],
                        node_selector={simnodes.SIMULATED_ONLY_LABEL: "true"},
                        containers=[client.V1Container(name="main", image="does-not-exist.invalid/x:1")],
                    ),
                ),
            ),
        ),
    )
    wait_for(
        lambda: apps.read_namespaced_deployment("many", namespace),
        lambda d: (d.status.ready_replicas or 0) == replicas,
        180,
        what=f"{replicas} simulated pods Ready",
        describe=lambda d: f"ready={d.status.ready_replicas}",
    )
