"""The chart's generated files match their sources (CRDs, RBAC rules, Argo CD snippet,
README), and the generators refuse sources they cannot turn into chart files."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
import yaml

from gpufleet.rbac import rules_document

from .conftest import CHART, REPO_ROOT, load_hack_module

sync_chart = load_hack_module("sync_chart")
chart_readme = load_hack_module("chart_readme")

CRD = """\
# a header comment
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: things.example.io
spec:
  group: example.io
"""


@pytest.mark.parametrize("script", ["sync_chart", "chart_readme"])
def test_generated_files_are_current(script):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hack" / f"{script}.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_crd_is_in_the_chart_and_nothing_else(render):
    sources = {p.name for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert sources and {p.name for p in (CHART / "templates" / "crds").glob("*.yaml")} == sources
    assert sync_chart.stale_files(sync_chart.expected_files()) == []


def test_rendered_crds_equal_the_generated_ones_apart_from_chart_metadata(render):
    rendered = {d["metadata"]["name"]: d for d in render() if d["kind"] == "CustomResourceDefinition"}
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"].pop("labels")["app.kubernetes.io/part-of"] == "gpufleet"
        assert crd == source


def test_stale_files_names_an_edited_and_a_leftover_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sync_chart, "CHART_CRD_DIR", tmp_path)
    monkeypatch.setattr(sync_chart, "REPO_ROOT", tmp_path)
    current = tmp_path / "things.yaml"
    current.write_text("old")
    (tmp_path / "gone.yaml").write_text("x")
    assert sync_chart.stale_files({current: "new"}) == ["things.yaml", "gone.yaml (no source any more)"]


def test_crd_template_is_switched_and_keeps_the_crd_text():
    template = sync_chart.chart_crd_template(CRD, "crds/things.yaml")
    lines = template.splitlines()
    assert lines[1] == "{{- if .Values.crds.install }}" and lines[-1] == "{{- end }}"
    assert "    helm.sh/resource-policy: keep" in lines
    assert "# a header comment" not in template
    assert template.endswith("  name: things.example.io\nspec:\n  group: example.io\n{{- end }}\n")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (CRD.replace("example.io\n", "{{ example }}\n"), "template code"),
        (CRD.replace("CustomResourceDefinition", "ConfigMap"), "not a CustomResourceDefinition"),
        (CRD.replace("metadata:\n", "metadata:\n  annotations: {a: b}\n"), "metadata.annotations is set"),
        (CRD.replace("metadata:\n", "metadata: \n"), "exactly one top-level 'metadata:'"),
    ],
)
def test_crd_template_refuses_what_it_cannot_carry(text, problem):
    with pytest.raises(sync_chart.SyncError, match=problem):
        sync_chart.chart_crd_template(text, "crds/things.yaml")


def test_rbac_rules_file_is_the_operators_rules():
    text = (CHART / "files" / "rbac-rules.yaml").read_text()
    assert yaml.safe_load(text) == rules_document()


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, "missing \\['reason'\\]"),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "reason": " "}, "reason is empty"),
        ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "reason": "x"}, "only be created"),
    ],
)
def test_rbac_rules_file_refuses_rules_without_reason_or_beyond_policy(rule, problem):
    with pytest.raises(sync_chart.SyncError, match=problem):
        sync_chart.rbac_rules_file({"namespaced": [rule]})


def test_argocd_snippet_carries_each_health_check():
    configmap = yaml.safe_load((REPO_ROOT / "docs" / "argocd" / "argocd-cm.yaml").read_text())
    for kind in ("WorkerPool", "GenerationJob"):
        script = (REPO_ROOT / "docs" / "argocd" / "gpufleet.io" / kind / "health.lua").read_text()
        assert configmap["data"][f"resource.customizations.health.gpufleet.io_{kind}"] == script


def test_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


# --- README from values.yaml ---------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "replicas": {"type": "integer"},
        "image": {"type": "object", "properties": {"tag": {"type": "string"}}},
    },
}


def test_readme_lists_every_key_with_type_default_and_comment():
    readme = (CHART / "README.md").read_text()
    values = (CHART / "values.yaml").read_text()
    docs = chart_readme.documented_keys(values)
    assert len(docs) > 50
    for doc in docs:
        assert f"| `{doc.key}` |" in readme
    assert "| `replicas` | integer | `1` | Operator replicas." in readme
    assert "| `image.pullPolicy` | string (Always, IfNotPresent, Never) |" in readme


def test_readme_row_comes_from_the_comment_above_the_key():
    text = "# How many.\nreplicas: 2\n# The image.\nimage:\n  # Its tag.\n  tag: v1\n"
    rendered = chart_readme.render(text, SCHEMA)
    assert rendered.endswith(
        "| `replicas` | integer | `2` | How many. |\n"
        "| `image` | object |  | The image. |\n"
        '| `image.tag` | string | `"v1"` | Its tag. |\n'
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "replicas: 2\n# The image.\nimage:\n  # Its tag.\n  tag: v1\n",
            "values.yaml:1: key replicas has no comment",
        ),
        (
            "# How many.\nreplicas: 2\n# The image.\nimage:\n  tag: v1\n",
            "values.yaml:5: key image.tag has no comment",
        ),
        (
            "# How many.\nreplicas: 2\n# The image.\nimage:\n  # Its tag.\n  tag: v1\n  # Typo.\n  tga: v1\n",
            "key image.tga is not declared in values.schema.json",
        ),
        ("# How many.\nreplicas: 2\n", "property image has no key in values.yaml"),
        ("# How many.\nreplicas: 2\n# Items.\nitems:\n  - a\n", "values.yaml:5: only `key: value` lines"),
    ],
)
def test_readme_generator_refuses_undocumented_or_undeclared_keys(text, problem):
    with pytest.raises(chart_readme.ValuesDocError, match=problem):
        chart_readme.render(text, SCHEMA)


def test_schema_refuses_unknown_keys_at_every_level():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def closed(node, path):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '/'} accepts unknown keys"
            for key, child in node["properties"].items():
                closed(child, f"{path}/{key}")

    closed(schema, "")
