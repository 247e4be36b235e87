"""Field types shared by the models: Kubernetes names, quantities, timestamps.

Each type carries both its Python validation and the OpenAPI schema the CRD gets, so the
two cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from gpufleet.api.cel import quantity_expr, rule, validations
from gpufleet.api.quantity import Quantity, QuantityError, parse_quantity

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A label or annotation key: an optional DNS subdomain prefix and "/", then a name.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
MAX_QUALIFIED_NAME_CHARS = 316  # 253 prefix + "/" + 63 name

# Quantities in gpufleet fields: Kubernetes' own pattern, minus fractional or 3+ digit
# exponents ("1e1.5" does not parse; "1e999999999" parses but no GPU has that much memory,
# and comparing it costs the API server and the operator an enormous number).
QUANTITY_FIELD_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,2}))?$"
)
MAX_QUANTITY_CHARS = 64
MAX_VRAM = "1Pi"  # far beyond any GPU; bounds what a typo can ask for

DnsLabel = Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]
DnsSubdomain = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


def _quantity_schema(description: str) -> dict[str, Any]:
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_FIELD_PATTERN,
        "maxLength": MAX_QUANTITY_CHARS,
        "description": description,
    }


def _parsed(value: int | str) -> Quantity:
    if isinstance(value, str) and not re.search(QUANTITY_FIELD_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a quantity like 24Gi, 16384Mi or 2e9 (must match {QUANTITY_FIELD_PATTERN})"
        )
    try:
        return parse_quantity(value)
    except QuantityError as error:
        raise ValueError(str(error)) from None


def _non_negative(value: int | str) -> int | str:
    if _parsed(value) < Quantity.parse("0"):
        raise ValueError(f"{value!r} must not be negative")
    return value


VRAM_RULE_MESSAGE = f"must be a quantity greater than 0 and at most {MAX_VRAM}, like 24Gi"


def _vram(value: int | str) -> int | str:
    amount = _parsed(value)
    if not Quantity.parse("0") < amount <= Quantity.parse(MAX_VRAM):
        raise ValueError(f"{value!r} {VRAM_RULE_MESSAGE}")
    return value


# An amount of memory as Kubernetes writes it: ``24Gi``, ``16384Mi`` or a number of bytes.
# Kept as written (int or str) so a spec reads back exactly as it was applied; use
# ``parse_quantity`` for the amount.
QuantityValue = Annotated[
    StrictInt | StrictStr,
    AfterValidator(_non_negative),
    WithJsonSchema(_quantity_schema("A Kubernetes quantity: 24Gi, 16384Mi, 2e9 or bytes.")),
]

_VRAM_CEL = rule(
    f"isQuantity(string(self)) && {quantity_expr('self')}.isGreaterThan(quantity('0')) && "
    f"{quantity_expr('self')}.compareTo(quantity('{MAX_VRAM}')) <= 0",
    VRAM_RULE_MESSAGE,
)

# VRAM that a model or a job needs, or that a GPU must have: positive and bounded.
VramQuantity = Annotated[
    StrictInt | StrictStr,
    AfterValidator(_vram),
    WithJsonSchema(
        _quantity_schema("GPU memory, a Kubernetes quantity such as 24Gi or 16384Mi.")
        | validations(_VRAM_CEL)
    ),
]


def _utc_seconds(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(microsecond=0)


# A point in time as Kubernetes writes it (metav1.Time): RFC 3339, UTC, whole seconds.
Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_utc_seconds),
    PlainSerializer(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


@dataclass(frozen=True)
class UniqueItems:
    """A list whose entries are unique: ``x-kubernetes-list-type: set`` without keys, ``map``
    keyed by ``keys`` with them. The API server refuses duplicates; so does this validator.

    Use as ``Annotated[list[Model], UniqueItems("name")]``.
    """

    keys: tuple[str, ...] = ()

    def __init__(self, *keys: str) -> None:
        object.__setattr__(self, "keys", keys)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        result = handler(schema)
        result["x-kubernetes-list-type"] = "map" if self.keys else "set"
        if self.keys:
            result["x-kubernetes-list-map-keys"] = list(self.keys)
        return result

    def _check(self, items: list[Any]) -> list[Any]:
        seen = set()
        for index, item in enumerate(items):
            key = tuple(getattr(item, k) for k in self.keys) if self.keys else item
            if key in seen:
                what = "/".join(self.keys) or "value"
                raise ValueError(f"entry {index} duplicates {what} {key[0] if self.keys else key!r}")
            seen.add(key)
        return items
