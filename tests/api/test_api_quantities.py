"""The API server's CEL quantity library and gpufleet's parser agree on every amount.

A pool whose model needs ``vram`` on GPUs of ``minMemory`` is valid exactly when both parse,
are within bounds, and vram <= minMemory; the server decides with Kubernetes' own quantity
code, the models with gpufleet.api.quantity. Equal amounts in different spellings probe
the boundary.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gpufleet.api import models
from gpufleet.api.testing import Objects, Refused

pytestmark = pytest.mark.cluster

_spelled = st.builds(
    lambda sign, number, suffix: f"{sign}{number}{suffix}",
    st.sampled_from(["", "", "+", "-"]),
    st.from_regex(r"\A([0-9]{1,4}(\.[0-9]{0,3})?|\.[0-9]{1,3})\Z"),
    st.sampled_from(
        ["", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "e9", "E12", "e-3"]
    ),
)
# The same amounts written differently, so that vram == minMemory happens often.
_equal_pairs = st.sampled_from(
    [
        ("1Gi", "1073741824"),
        ("1.5Gi", "1536Mi"),
        ("1G", "1e9"),
        ("1024Ti", "1Pi"),
        ("0.5Ki", "512"),
        ("1Pi", "1125899906842624"),
    ]
).flatmap(lambda pair: st.permutations(pair).map(tuple))
quantity_pairs = (
    st.tuples(_spelled | st.integers(-5, 2**51), _spelled | st.integers(-5, 2**51)) | _equal_pairs
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pair=quantity_pairs)
def test_server_and_models_agree(objects: Objects, pair: tuple[int | str, int | str]) -> None:
    vram, min_memory = pair
    manifest = {
        "apiVersion": models.API_VERSION,
        "kind": "WorkerPool",
        "metadata": {"name": f"q{uuid.uuid4().hex[:10]}"},
        "spec": {
            "image": "ghcr.io/gpufleet/worker:0.1.0",
            "models": [{"name": "m", "source": "builtin://m", "vram": vram}],
            "tasks": ["text-to-image"],
            "gpu": {"minMemory": min_memory},
        },
    }
    try:
        models.WorkerPool.model_validate(manifest)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    try:
        objects.create(manifest)
        server_accepts, said = True, ""
    except Refused as refused:
        server_accepts, said = False, refused.message
    assert model_accepts == server_accepts, said
