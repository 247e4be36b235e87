"""crds/ and docs/api.md are generated from the models, structural, and never stale."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from gpufleet.api import crdgen, models
from gpufleet.api.cel import VALIDATIONS, make_immutable
from gpufleet.api.inputs import CamelModel, JobInput


def test_generated_files_are_up_to_date() -> None:
    stale = [str(p.relative_to(crdgen.REPO_ROOT)) for p in crdgen.stale_files()]
    assert stale == [], "run: python -m gpufleet.api.crdgen"


def test_check_fails_on_drift_and_generation_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crdgen, "CRD_DIR", tmp_path / "crds")
    monkeypatch.setattr(crdgen, "API_DOC", tmp_path / "api.md")
    monkeypatch.setattr(crdgen, "REPO_ROOT", tmp_path)
    (tmp_path / "api.md").write_text(f"# API\n\n{crdgen.DOC_BEGIN}\nold\n{crdgen.DOC_END}\n")
    assert crdgen.main(["--check"]) == 1
    assert crdgen.main([]) == 0
    assert crdgen.main(["--check"]) == 0
    edited = tmp_path / "crds" / "workerpools.gpufleet.io.yaml"
    edited.write_text(edited.read_text().replace("maxReplicas", "maxReplica"))
    assert crdgen.main(["--check"]) == 1


def test_doc_without_markers_is_an_error() -> None:
    with pytest.raises(crdgen.SchemaError, match="marker"):
        crdgen.render_api_doc("# API without the generated section\n")


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("name", ["workerpools.gpufleet.io.yaml", "generationjobs.gpufleet.io.yaml"])
def test_schemas_are_structural_and_bounded(name: str) -> None:
    crd = crdgen.crds()[name]
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), path
        if node.get("type") == "array" and path.startswith(".spec"):
            assert "maxItems" in node, f"{path}: unbounded lists make CEL cost unbounded"
        for rule in node.get(VALIDATIONS, []):
            assert rule["message"], f"{path}: {rule['rule']} has no message"


def test_subresources_names_and_columns() -> None:
    pool = crdgen.crds()["workerpools.gpufleet.io.yaml"]["spec"]
    job = crdgen.crds()["generationjobs.gpufleet.io.yaml"]["spec"]
    assert pool["names"]["shortNames"] == ["wp"]
    assert job["names"]["shortNames"] == ["gj", "genjob"]
    assert pool["names"]["categories"] == job["names"]["categories"] == ["gpufleet"]
    assert pool["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "scale" not in job["versions"][0]["subresources"]

    def columns(spec: dict[str, Any], priority: int) -> list[str]:
        return [
            c["name"]
            for c in spec["versions"][0]["additionalPrinterColumns"]
            if c.get("priority", 0) == priority
        ]

    assert columns(pool, 0) == ["Ready", "Desired", "Queue", "Running", "Reason", "Age"]
    assert columns(job, 0) == ["Phase", "Pool", "Progress", "Reason", "Queue", "Worker", "Age"]
    assert "Artifact" in columns(job, 1)


def test_job_input_schema_comes_from_the_worker_contract() -> None:
    job = crdgen.crds()["generationjobs.gpufleet.io.yaml"]
    spec = job["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    expected = crdgen.structural_schema(JobInput)
    expected.pop("description")
    make_immutable(expected, f"spec.input {models.IMMUTABLE_SPEC_RULE}")  # the job's, not the worker's
    actual = dict(spec["properties"]["input"])
    actual.pop("description")
    assert actual == expected


def test_every_spec_field_is_documented() -> None:
    doc = crdgen.API_DOC.read_text()
    for crd in crdgen.crds().values():
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for path, _ in walk(spec, "spec"):
            if "{}" not in path and path != "spec" and not path.endswith("[]"):
                assert f"`{path}`" in doc, path


class _FreeForm(CamelModel):
    anything: dict[str, Any]


class _Exclusive(BaseModel):
    count: int = Field(gt=0)


class _A(CamelModel):
    a: int


class _B(CamelModel):
    b: int


class _Union(CamelModel):
    either: _A | _B


@pytest.mark.parametrize(
    ("model", "problem"),
    [(_FreeForm, "preserve-unknown-fields"), (_Exclusive, "exclusiveMinimum"), (_Union, "union")],
)
def test_constructs_without_a_structural_equivalent_are_refused(model: type[BaseModel], problem: str) -> None:
    with pytest.raises(crdgen.SchemaError, match=problem):
        crdgen.structural_schema(model)


def test_optional_fields_are_plain_properties() -> None:
    schema = crdgen.structural_schema(models.GenerationJobSpec)
    vram = schema["properties"]["vram"]
    assert "anyOf" in vram and vram["x-kubernetes-int-or-string"]  # the int-or-string union stays
    assert "vram" not in schema["required"]
    seed = crdgen.structural_schema(JobInput)["properties"]["seed"]
    assert seed["type"] == "integer" and "default" not in seed


class Yaml11Loader(yaml.SafeLoader):
    """Reads y / n (any case) as booleans, as YAML 1.1 does and kubectl and Helm do."""


Yaml11Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


@pytest.mark.parametrize("name", sorted(crdgen.crds()))
def test_crds_read_the_same_in_yaml_1_1(name: str) -> None:
    # A bare `- y` in a required list reached Helm as `true` and the API server refused the CRD.
    text = crdgen.render_crd(crdgen.crds()[name])
    assert yaml.load(text, Loader=Yaml11Loader) == yaml.safe_load(text)


def test_immutability_rules_sit_on_the_narrowest_nodes() -> None:
    shared = [{"rule": "has(self.a) != has(self.b)", "message": "one of a or b"}]
    node = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer", "default": 1},
            "ref": {"type": "object", "properties": {"a": {"type": "string"}}, VALIDATIONS: shared},
            "tags": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    make_immutable(node, "fixed")

    def rules(n: dict[str, Any]) -> list[tuple[str, str | None]]:
        return [(r["rule"], r.get("fieldPath")) for r in n.get(VALIDATIONS, []) if r["message"] == "fixed"]

    # Only the optional fields without a default are checked for presence at the object...
    assert rules(node) == [
        ("has(self.ref) == has(oldSelf.ref)", ".ref"),
        ("has(self.tags) == has(oldSelf.tags)", ".tags"),
        ("has(self.extra) == has(oldSelf.extra)", ".extra"),
    ]
    # ...and each leaf, list and map compares itself; an object leaves that to its fields.
    props = node["properties"]
    for name in ("name", "size", "tags", "extra"):
        assert rules(props[name]) == [("self == oldSelf", None)], name
    assert rules(props["ref"]) == [("has(self.a) == has(oldSelf.a)", ".a")]
    assert rules(props["ref"]["properties"]["a"]) == [("self == oldSelf", None)]
    assert shared == [{"rule": "has(self.a) != has(self.b)", "message": "one of a or b"}]  # not appended to


def test_no_job_spec_rule_compares_a_whole_object() -> None:
    """CEL compares an object field by field, building a map of its properties for each: at the
    spec's width on every status write. Objects only check which of their fields are present."""
    job = crdgen.crds()["generationjobs.gpufleet.io.yaml"]
    spec = job["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    checked = 0

    def walk(node: dict[str, Any], path: str) -> None:
        nonlocal checked
        for entry in node.get(VALIDATIONS, []):
            if "oldSelf" in entry["rule"] and "properties" in node:
                assert re.fullmatch(r"has\(self\.\w+\) == has\(oldSelf\.\w+\)", entry["rule"]), path
                checked += 1
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(spec, "spec")
    assert checked > 0
