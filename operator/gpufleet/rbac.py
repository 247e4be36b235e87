"""What the operator may do in the cluster: the one list its RBAC is generated from.

The Helm chart renders these rules (``charts/gpufleet/files/rbac-rules.yaml`` is generated
from here; a test fails on drift) and the operator's own tests run under exactly this
identity. Every rule says why it exists. Deliberately absent: wildcards, ``escalate``,
``bind``, ``impersonate``, ``pods/exec``, and reading Secrets: the operator derives each
pool's worker token from its own key (mounted into its pod), so it only ever creates the
token Secrets and never reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.api.models import GROUP


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    reason: str

    def manifest(self) -> dict[str, list[str]]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


# Rules in every namespace the operator watches (a ClusterRole, or one Role per namespace).
NAMESPACED_RULES: tuple[Rule, ...] = (
    Rule((GROUP,), ("generationjobs",), ("get", "list", "watch"), "watch jobs"),
    Rule(
        (GROUP,),
        ("workerpools",),
        ("get", "list", "watch", "patch"),
        "watch pools; hold a pool (kopf's finalizer) until its round has stopped",
    ),
    Rule((GROUP,), ("generationjobs",), ("delete",), "delete finished jobs after ttlSecondsAfterFinished"),
    Rule(
        (GROUP,),
        ("workerpools/status", "generationjobs/status"),
        ("get", "patch", "update"),
        "write what the operator observes to status (it never edits spec)",
    ),
    Rule(
        ("",),
        ("pods",),
        ("get", "list", "watch", "create", "delete", "patch"),
        "run worker pods; replace failed ones; remove drained ones; mark a worker draining",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("create",),
        "create each pool's worker token Secret (never read: the token is derived, not fetched)",
    ),
    Rule(("", "events.k8s.io"), ("events",), ("create", "patch"), "report lifecycle steps as Events"),
)

# Cluster-scoped reads, needed in every mode.
CLUSTER_RULES: tuple[Rule, ...] = (
    Rule(
        ("",),
        ("nodes",),
        ("get", "list", "watch"),
        "read GPU Feature Discovery labels to tell whether any node has a GPU big enough for a job",
    ),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("get", "list", "watch"),
        "notice the gpufleet CRDs when they are installed or upgraded after the operator started",
    ),
)

# In the operator's own namespace only.
OWN_NAMESPACE_RULES: tuple[Rule, ...] = (
    Rule(
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "create", "update"),
        "leader election: one active operator when several replicas run",
    ),
)


# What people get through the built-in roles: ClusterRoles labelled with AGGREGATE_LABELS
# join `view`, `edit` and `admin`, so whoever may edit Deployments in a namespace may also
# submit, cancel and delete jobs there, with no RBAC written by an admin.
USER_VIEW_RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        ("workerpools", "generationjobs"),
        ("get", "list", "watch"),
        "see pools and jobs: kubectl get, gpufleet get, describe, wait, top",
    ),
)
USER_EDIT_RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        ("workerpools", "generationjobs"),
        ("create", "update", "patch", "delete", "deletecollection"),
        "submit, cancel (spec.cancel) and delete jobs; create, change and delete pools",
    ),
    Rule((GROUP,), ("workerpools/scale",), ("get", "update", "patch"), "kubectl scale a pool"),
)
AGGREGATE_LABEL = "rbac.authorization.k8s.io/aggregate-to-{role}"
# The built-in role each user role joins (edit and admin hold everything view holds).
AGGREGATE_TO = {"view": ("view", "edit", "admin"), "edit": ("edit", "admin")}


def aggregate_labels(user_role: str) -> dict[str, str]:
    """The labels that put ``user_role`` (view or edit) into the built-in roles."""
    return {AGGREGATE_LABEL.format(role=role): "true" for role in AGGREGATE_TO[user_role]}


def rules_document() -> dict[str, list[dict]]:
    """All rule groups with their reasons, in the shape the chart's templates read."""

    def rows(rules: tuple[Rule, ...]) -> list[dict]:
        return [{**r.manifest(), "reason": r.reason} for r in rules]

    return {
        "namespaced": rows(NAMESPACED_RULES),
        "cluster": rows(CLUSTER_RULES),
        "ownNamespace": rows(OWN_NAMESPACE_RULES),
        "userView": rows(USER_VIEW_RULES),
        "userEdit": rows(USER_EDIT_RULES),
    }
