"""CEL validation rules declared beside the models they guard.

A model or field carries its ``x-kubernetes-validations`` in its JSON schema extras; the CRD
generator copies them into the CRD unchanged. The same rule is enforced in Python by the
model's own validator, so a spec that the API server refuses never validates here either
(tests run every invalid manifest against both).
"""

from __future__ import annotations

from typing import Any

VALIDATIONS = "x-kubernetes-validations"


def rule(
    expression: str,
    message: str,
    *,
    field_path: str | None = None,
    reason: str | None = None,
    message_expression: str | None = None,
) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry.

    ``message`` names the field and the rule; ``field_path`` (relative to the object the rule
    is on, like ``.input.image``) makes the API server report the error at that field;
    ``reason`` is a ``FieldValue*`` reason (``FieldValueRequired``, ``FieldValueForbidden``, ...).
    """
    entry: dict[str, Any] = {"rule": expression, "message": message}
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """JSON schema extras holding ``rules``, for ``Field(json_schema_extra=...)`` or a model."""
    return {VALIDATIONS: list(rules)}


def quantity_expr(expression: str) -> str:
    """CEL for an int-or-string quantity field as a Kubernetes CEL ``quantity``.

    ``string()`` turns an integer into its decimal text and leaves a string as it is.
    """
    return f"quantity(string({expression}))"
