"""docs/worker-api.md and docs/worker-openapi.json match the server's own OpenAPI schema."""

from __future__ import annotations

from gpufleet_worker import apidoc
from gpufleet_worker import protocol as p
from gpufleet_worker.server import openapi_schema


def test_the_api_docs_are_fresh() -> None:
    assert apidoc.main(["--check"]) == 0, "run: python -m gpufleet_worker.apidoc"


def test_the_schema_serves_exactly_the_protocol_routes_and_guards_them() -> None:
    schema = openapi_schema()
    routes = {p.HEALTHZ, p.READYZ, p.METRICS, p.INVENTORY, p.JOBS, p.JOB, p.JOB_CANCEL, p.JOB_EVENTS}
    assert set(schema["paths"]) == routes
    for path, methods in schema["paths"].items():
        for operation in methods.values():
            assert bool(operation.get("security")) == (path not in {p.HEALTHZ, p.READYZ}), path


def test_a_stale_doc_is_reported(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(apidoc, "MARKDOWN", tmp_path / "worker-api.md")
    monkeypatch.setattr(apidoc, "SCHEMA", tmp_path / "worker-openapi.json")
    assert apidoc.main(["--check"]) == 1
    assert apidoc.main([]) == 0
    assert apidoc.main(["--check"]) == 0
    (tmp_path / "worker-api.md").write_text("edited by hand\n")
    assert apidoc.main(["--check"]) == 1
