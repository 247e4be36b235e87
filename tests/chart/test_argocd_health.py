"""The Argo CD health checks in docs/argocd, run by a real Lua interpreter on the sample
objects next to them (Argo CD's own layout: health_test.yaml plus testdata/)."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.models import GenerationJob, WorkerPool

from .conftest import REPO_ROOT

HEALTH_DIR = REPO_ROOT / "docs" / "argocd" / "gpufleet.io"
MODELS = {"WorkerPool": WorkerPool, "GenerationJob": GenerationJob}
LUA = next((found for name in ("lua5.4", "lua5.3", "lua") if (found := shutil.which(name))), None)
needs_lua = pytest.mark.skipif(LUA is None, reason="no Lua interpreter on PATH (apt-get install lua5.4)")

# Runs a health script the way Argo CD does: the object as the global `obj`, the chunk's
# return value as the health. Prints status and message on two lines.
DRIVER = """
obj = dofile(arg[1])
local hs = dofile(arg[2])
assert(type(hs) == "table", "health script returned " .. type(hs))
print(hs.status)
print(hs.message or "")
"""


def lua_literal(value: Any) -> str:
    """A Lua expression for JSON-like data, as Argo CD hands objects to health scripts."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


def health(kind: str, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    assert LUA is not None
    data = tmp_path / "obj.lua"
    data.write_text("return " + lua_literal(obj) + "\n")
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER)
    result = subprocess.run(
        [LUA, str(driver), str(data), str(HEALTH_DIR / kind / "health.lua")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n", 1)
    return status, message.removesuffix("\n")


def cases() -> list[Any]:
    found = []
    for kind in MODELS:
        spec = yaml.safe_load((HEALTH_DIR / kind / "health_test.yaml").read_text())
        for case in spec["tests"]:
            found.append(pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}"))
    return found


@needs_lua
@pytest.mark.parametrize(("kind", "case"), cases())
def test_health_of_sample(kind, case, tmp_path):
    obj = yaml.safe_load((HEALTH_DIR / kind / case["inputPath"]).read_text())
    expected = case["healthStatus"]
    assert health(kind, obj, tmp_path) == (expected["status"], expected["message"])


@pytest.mark.parametrize(("kind", "case"), cases())
def test_samples_are_objects_the_operator_can_write(kind, case):
    obj = yaml.safe_load((HEALTH_DIR / kind / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    MODELS[kind].model_validate(obj)


@pytest.mark.parametrize("kind", MODELS)
def test_samples_cover_every_health_status(kind):
    spec = yaml.safe_load((HEALTH_DIR / kind / "health_test.yaml").read_text())
    assert {c["healthStatus"]["status"] for c in spec["tests"]} == {"Healthy", "Progressing", "Degraded"}


@needs_lua
@pytest.mark.parametrize("kind", MODELS)
def test_garbage_status_is_progressing_not_an_error(kind, tmp_path):
    obj = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": []}}
    assert health(kind, obj, tmp_path)[0] == "Progressing"


@needs_lua
def test_driver_reports_a_broken_script(tmp_path):
    broken = tmp_path / "broken.lua"
    broken.write_text("return 42\n")
    (tmp_path / "driver.lua").write_text(DRIVER)
    (tmp_path / "obj.lua").write_text("return {}\n")
    assert LUA is not None
    result = subprocess.run(
        [LUA, str(tmp_path / "driver.lua"), str(tmp_path / "obj.lua"), str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "health script returned number" in result.stderr


def test_lua_literal_escapes_strings_and_nests():
    assert (
        lua_literal({"a": [1, True, None], "b": 'say "hi"\n'})
        == '{["a"] = {1, true, nil}, ["b"] = "say \\"hi\\"\\n"}'
    )
