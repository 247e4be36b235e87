"""Test support for the gpufleet API: strategies for valid objects, manifest edits, API calls.

Needs the ``dev`` extra (hypothesis). The strategies walk the generated CRD schema, so they
produce exactly the shapes the API server validates, then repair the cross-field rules
(min <= max, task versus input, ...) so that nearly every draw is valid; the models have
the last word.
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException
from pydantic import BaseModel, ValidationError

from gpufleet import labels
from gpufleet.api import crdgen, models
from gpufleet.api.fields import QUALIFIED_NAME_PATTERN
from gpufleet.api.inputs import MAX_PIXELS, TASK_SECTIONS, TASKS_NEEDING_IMAGE, TASKS_NEEDING_PROMPT, Task

Json = dict[str, Any]

# Small collections keep objects (and 2-core CI) fast; the bounds themselves are tested by
# the invalid-manifest table.
MAX_DRAWN_ITEMS = 3
MAX_DRAWN_CHARS = 40
_TEXT = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
_NODE_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
    }
}


# --- manifest edits ---------------------------------------------------------------------------


def _parts(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def edited(manifest: Json, set: Mapping[str, Any] | None = None, remove: Iterable[str] = ()) -> Json:
    """A copy of ``manifest`` with dotted paths (``spec.models.0.vram``) set or removed."""
    result = copy.deepcopy(manifest)
    for path, value in (set or {}).items():
        *parents, last = _parts(path)
        node: Any = result
        for part in parents:
            node = node[part]
        node[last] = value
    for path in remove:
        *parents, last = _parts(path)
        node = result
        for part in parents:
            node = node[part]
        del node[last]
    return result


def error_text(error: ValidationError) -> str:
    """Pydantic errors as the API server words paths: ``spec.models[0].vram: message``."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path}: {item['msg']}")
    return "\n".join(lines)


# --- strategies from the structural schema ----------------------------------------------------


def _quantity(node: Json) -> st.SearchStrategy[int | str]:
    """Positive amounts up to 1Ti, as bytes or with a suffix: valid for every quantity field."""
    with_suffix = st.builds(
        lambda n, suffix: f"{n}{suffix}",
        st.integers(1, 1023),
        st.sampled_from(["Ki", "Mi", "Gi", "M", "G", ""]),
    )
    return st.integers(1, 2**40) | with_suffix


def _string(node: Json) -> st.SearchStrategy[str]:
    if node.get("format") == "date-time":
        return st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=0, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
    max_length = node.get("maxLength", MAX_DRAWN_CHARS)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True, alphabet=_TEXT).filter(
            lambda s: len(s) <= max_length
        )
    return st.text(_TEXT, max_size=min(max_length, MAX_DRAWN_CHARS))


def _integer(node: Json) -> st.SearchStrategy[int]:
    low, high = node.get("minimum", 0), node.get("maximum", 2**31 - 1)
    step = node.get("multipleOf", 1)
    return st.integers(-(-low // step), high // step).map(lambda n: n * step)


def _key(node: Json) -> st.SearchStrategy[str]:
    """Map keys: label-key syntax (every gpufleet map checks it), never a reserved key."""
    return (
        st.from_regex(QUALIFIED_NAME_PATTERN, fullmatch=True, alphabet=string.printable)
        .filter(lambda k: len(k) <= 63 and not k.startswith(f"{labels.GROUP}/"))
        .filter(lambda k: k != labels.GPU_RESOURCE)
    )


def _array(node: Json) -> st.SearchStrategy[list[Any]]:
    items = from_schema(node["items"])
    low = node.get("minItems", 0)
    high = min(node.get("maxItems", MAX_DRAWN_ITEMS), max(low, MAX_DRAWN_ITEMS))
    kind = node.get("x-kubernetes-list-type")
    if kind == "set":
        return st.lists(items, min_size=low, max_size=high, unique=True)
    if kind == "map":
        keys = node["x-kubernetes-list-map-keys"]
        return st.lists(items, min_size=low, max_size=high, unique_by=lambda e: tuple(e[k] for k in keys))
    return st.lists(items, min_size=low, max_size=high)


def _object(node: Json) -> st.SearchStrategy[Json]:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.sampled_from([{}, _NODE_AFFINITY])
    if "additionalProperties" in node:
        size = min(node.get("maxProperties", MAX_DRAWN_ITEMS), MAX_DRAWN_ITEMS)
        return st.dictionaries(_key(node), from_schema(node["additionalProperties"]), max_size=size)
    properties = node.get("properties", {})
    required = set(node.get("required", []))
    return st.fixed_dictionaries(
        {name: from_schema(sub) for name, sub in properties.items() if name in required},
        optional={name: from_schema(sub) for name, sub in properties.items() if name not in required},
    )


def from_schema(node: Json) -> st.SearchStrategy[Any]:
    """Data that satisfies a structural schema node's OpenAPI part (not its CEL rules)."""
    if node.get("x-kubernetes-int-or-string"):
        return _quantity(node)
    if "enum" in node:
        return st.sampled_from(node["enum"])
    match node.get("type"):
        case "string":
            return _string(node)
        case "integer":
            return _integer(node)
        case "number":
            return st.floats(node.get("minimum", -1e6), node.get("maximum", 1e6), allow_nan=False)
        case "boolean":
            return st.booleans()
        case "array":
            return _array(node)
        case _:
            return _object(node)


def _schema(kind: str, part: str) -> Json:
    for crd in crdgen.crds().values():
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][part]
    raise KeyError(kind)


# --- repairs: cross-field rules the schema walk cannot know -----------------------------------


def _repair_pool_spec(spec: Json) -> Json:
    runtime = spec.get("runtime", models.Runtime.BUILTIN)
    for index, model in enumerate(spec["models"]):
        builtin = model["source"].startswith("builtin://")
        if runtime == models.Runtime.BUILTIN:
            model["source"] = model["source"] if builtin else f"builtin://model-{index}"
            model.pop("digest", None)  # builtin models have no files to check
        elif builtin:
            model["source"] = f"file:///models/{index}"
        # A LoRA sits on the pool's first model, which is a plain pipeline (diffusers only).
        if "base" in model and (index == 0 or runtime != models.Runtime.DIFFUSERS):
            del model["base"]
        elif "base" in model:
            model["base"] = spec["models"][0]["name"]
    gpu = spec.get("gpu", {})
    if "minMemory" in gpu:
        gpu["minMemory"] = "1Pi"  # fits every drawn model
    if "autoscaling" in spec:
        auto = spec["autoscaling"]
        low, high = sorted([auto.get("minReplicas", 0), auto["maxReplicas"]])
        auto.update(minReplicas=low, maxReplicas=max(high, 1))
    template = spec.get("template", {})
    template["env"] = [e for e in template.get("env", []) if _env_allowed(e)]
    for toleration in template.get("tolerations", []):
        if toleration.get("operator") == "Exists":
            toleration.pop("value", None)
    if str(template.get("priorityClassName", "")).startswith("system-"):
        del template["priorityClassName"]
    return spec


def _env_allowed(env: Json) -> bool:
    name = env["name"]
    reserved = name.startswith(models.RESERVED_ENV_PREFIXES) or name in models.RESERVED_ENV_NAMES
    one_source = len(env.get("valueFrom", {"one": None})) == 1
    return not reserved and one_source and not ("value" in env and "valueFrom" in env)


def _repair_job_spec(spec: Json) -> Json:
    task, job_input = Task(spec["task"]), spec["input"]
    width, height = job_input.get("width", 512), job_input.get("height", 512)
    if width * height > MAX_PIXELS:
        job_input["height"] = MAX_PIXELS // width // 8 * 8
    if task in TASKS_NEEDING_IMAGE:
        job_input.setdefault("image", {"url": "https://example.com/in.png"})
    if task is Task.INPAINT:
        job_input.setdefault("mask", {"url": "https://example.com/mask.png"})
    if task in TASKS_NEEDING_PROMPT and not job_input.get("prompt"):
        job_input["prompt"] = "a lighthouse"
    for section, owner in TASK_SECTIONS.items():
        if task is not owner:
            job_input.pop(section, None)
    if task is Task.SEGMENT:
        segment = job_input.setdefault("segment", {})
        if not segment.get("points") and not segment.get("boxes"):
            segment["points"] = [{"x": 1, "y": 1}]
        if segment.get("points"):
            segment["boxes"] = segment.get("boxes", [])[:1]
    return spec


def _valid(model: type[BaseModel], repair: Callable[[Json], Json], data: st.SearchStrategy[Json]):
    def validated(value: Json) -> BaseModel | None:
        try:
            return model.model_validate(repair(value))
        except ValidationError:
            return None

    return data.map(validated).filter(lambda m: m is not None)


def _no_image_conflicts(value: Json) -> Json:
    """ImageRef holds exactly one of url and object; the schema walk may draw both or none."""
    job_input = value.get("input", {})
    extra = job_input.get("caption", {}).get("extraImages", [])
    refs = [job_input.get("image"), job_input.get("mask"), *extra]
    for ref in refs:
        if ref is not None and ("url" in ref) == ("object" in ref):
            ref.clear()
            ref["url"] = "https://example.com/x.png"
    return value


def pool_specs() -> st.SearchStrategy[models.WorkerPoolSpec]:
    return _valid(models.WorkerPoolSpec, _repair_pool_spec, from_schema(_schema("WorkerPool", "spec")))


def pool_statuses() -> st.SearchStrategy[models.WorkerPoolStatus]:
    return _valid(models.WorkerPoolStatus, lambda s: s, from_schema(_schema("WorkerPool", "status")))


def job_specs() -> st.SearchStrategy[models.GenerationJobSpec]:
    data = from_schema(_schema("GenerationJob", "spec")).map(_no_image_conflicts)
    return _valid(models.GenerationJobSpec, _repair_job_spec, data)


def job_statuses() -> st.SearchStrategy[models.GenerationJobStatus]:
    return _valid(models.GenerationJobStatus, lambda s: s, from_schema(_schema("GenerationJob", "status")))


# --- API calls --------------------------------------------------------------------------------

PLURALS = {"WorkerPool": "workerpools", "GenerationJob": "generationjobs"}


class Refused(Exception):
    """The API server refused a request; ``message`` is what it said."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Objects:
    """Create, update and read gpufleet objects with strict field validation, as kubectl does."""

    api: client.CustomObjectsApi
    namespace: str

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return method(models.GROUP, models.VERSION, self.namespace, *args, **kwargs)
        except ApiException as error:
            body = json.loads(error.body) if error.body else {}
            raise Refused(error.status, body.get("message", str(error))) from None

    def create(self, manifest: dict[str, Any], validation: str = "Strict") -> dict[str, Any]:
        plural = PLURALS[manifest["kind"]]
        return self._call(
            self.api.create_namespaced_custom_object, plural, manifest, field_validation=validation
        )

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        plural, name = PLURALS[manifest["kind"]], manifest["metadata"]["name"]
        return self._call(
            self.api.replace_namespaced_custom_object, plural, name, manifest, field_validation="Strict"
        )

    def replace_status(self, manifest: dict[str, Any]) -> dict[str, Any]:
        plural, name = PLURALS[manifest["kind"]], manifest["metadata"]["name"]
        return self._call(
            self.api.replace_namespaced_custom_object_status,
            plural,
            name,
            manifest,
            field_validation="Strict",
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self._call(self.api.get_namespaced_custom_object, PLURALS[kind], name)
