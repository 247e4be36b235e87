#!/usr/bin/env bash
# Installs the gpufleet chart into a kind cluster, for machines with Docker: builds the
# operator image from the repository's Dockerfile, loads it into the cluster's nodes and
# runs `helm upgrade --install` with it. Extra arguments go to helm.
#
#   hack/kind-install.sh                                        # cluster "gpufleet", created if missing
#   KIND_CLUSTER=dev hack/kind-install.sh --set-json 'watchNamespaces=["studio"]'
#
# kind nodes have no GPUs: hack/kind-e2e.sh shows how to label them like GPU nodes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
cd "$repo_root"
name=${KIND_CLUSTER:-gpufleet}
image=${IMAGE:-ghcr.io/gpufleet/operator}
tag=${IMAGE_TAG:-dev}
namespace=${NAMESPACE:-gpufleet-system}
for tool in docker kind; do
  command -v "$tool" >/dev/null || { echo "$tool is required on PATH" >&2; exit 1; }
done
helm=$(python -c 'from gpufleet.localcluster import binaries; print(binaries.ensure("helm"))')

if ! kind get clusters | grep -qx "$name"; then
  kind create cluster --name "$name" --wait 120s
fi
mkdir -p _out
kubeconfig="$repo_root/_out/kind-$name.kubeconfig"
kind get kubeconfig --name "$name" > "$kubeconfig"

docker build -t "$image:$tag" .
kind load docker-image "$image:$tag" --name "$name"

"$helm" upgrade --install gpufleet charts/gpufleet \
  --kubeconfig "$kubeconfig" --namespace "$namespace" --create-namespace \
  --set image.repository="$image" --set image.tag="$tag" --set image.pullPolicy=Never \
  --wait --timeout 5m "$@"
echo "gpufleet is running in kind cluster $name; use it with: export KUBECONFIG=$kubeconfig"
