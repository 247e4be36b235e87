"""Where a job's artifacts may go: one set of rules for the API and the worker.

The API server refuses a ``spec.output.uri`` that can never be written (CEL rules built
from ``UNWRITABLE``), and the worker checks a submit's ``outputUri`` against the same rules
before it reserves a GPU, so no generation runs only to fail at its upload. Each rule is a
regular expression that both RE2 (CEL's ``matches``) and Python's ``re`` read alike.
Standard library only: the worker imports this without the operator's dependencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

S3_BUCKET_PATTERN = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
OUTPUT_URI_PATTERN = rf"^s3://{S3_BUCKET_PATTERN}(/\S*)?$"


@dataclass(frozen=True)
class UnwritableRule:
    refused: str  # a URI this matches can never be written
    message: str  # the rule, without the field's name (each side names its own field)


UNWRITABLE = (
    UnwritableRule(
        r"^s3://[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(/|$)",
        "the bucket must not be an IP address (a link-local or metadata address is not a "
        "bucket; S3 stores refuse such names)",
    ),
    UnwritableRule(
        r"^s3://[^/]*(\.\.|\.-|-\.)",
        "the bucket name must not contain '..', '.-' or '-.'",
    ),
    UnwritableRule(
        r"^[a-z0-9]+://[^/]*/(.*/)?\.\.?(/|$)",
        "'.' and '..' path segments are not allowed",
    ),
)


def cel_rule(rule: UnwritableRule) -> str:
    """The CEL expression, on the URI string itself, that holds when ``rule`` does not refuse it."""
    return f"!self.matches(r'{rule.refused}')"


def output_uri_problems(uri: str) -> list[str]:
    """Why artifacts can never be written under ``uri``; empty when they can."""
    return [rule.message for rule in UNWRITABLE if re.search(rule.refused, uri)]
