#!/usr/bin/env bash
# End-to-end tests on a kind cluster, for machines with Docker (the local fleet that
# hack/up and hack/test use needs no Docker). Creates a kind cluster, makes its worker
# nodes look like GPU nodes the way GPU Feature Discovery and the NVIDIA device plugin
# would (labels plus an nvidia.com/gpu capacity), then runs the cluster tests that do not
# rely on the local kubelet stand-in.
#
#   hack/kind-e2e.sh            # create cluster "gpufleet-e2e", test, keep it
#   KEEP=0 hack/kind-e2e.sh     # delete the cluster afterwards
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$repo_root"
name=${KIND_CLUSTER:-gpufleet-e2e}
kubeconfig="$repo_root/_out/kind-$name.kubeconfig"
mkdir -p _out
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "$tool is required on PATH" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$name"; then
  kind create cluster --name "$name" --wait 120s --config - <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
  - role: worker
KIND
fi
kind get kubeconfig --name "$name" > "$kubeconfig"
export KUBECONFIG="$kubeconfig"

# worker index -> product, memory (MiB), GPU count: the same mix as the local fleet.
gpu_classes=("Tesla-V100-SXM2-16GB 16384 2" "NVIDIA-L4 23034 2" "NVIDIA-A100-SXM4-80GB 81920 4")
mapfile -t workers < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sort)
for i in "${!workers[@]}"; do
  read -r product memory count <<<"${gpu_classes[$((i % ${#gpu_classes[@]}))]}"
  node=${workers[$i]#node/}
  kubectl label node "$node" --overwrite nvidia.com/gpu.present=true \
    "nvidia.com/gpu.product=$product" "nvidia.com/gpu.memory=$memory" "nvidia.com/gpu.count=$count"
  kubectl taint node "$node" nvidia.com/gpu=present:NoSchedule --overwrite
  # Extended resources are advertised through the node status, as the device plugin does.
  kubectl patch node "$node" --subresource=status --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$count\"}]"
done

status=0
GPUFLEET_TEST_KUBECONFIG="$kubeconfig" python -m pytest -m "cluster and not localkubelet" tests/cluster "$@" || status=$?
if [ "${KEEP:-1}" = 0 ]; then kind delete cluster --name "$name"; fi
exit $status
