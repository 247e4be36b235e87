"""Quantities parse, compare and print exactly as Kubernetes does.

golden.json holds what k8s.io/apimachinery itself answers for ~2300 spellings (regenerate
with ``cd tests/unit/quantity_golden && go run . > golden.json``); the property tests check
the algebra (canonical text parses back to the same value, order matches exact arithmetic).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufleet.api.quantity import (
    QUANTITY_PATTERN,
    Format,
    Quantity,
    QuantityError,
    parse_quantity,
)

GOLDEN = json.loads((Path(__file__).parent / "quantity_golden" / "golden.json").read_text())
INT64 = range(2**63)


@pytest.mark.parametrize("case", GOLDEN, ids=lambda case: repr(case["input"]))
def test_matches_kubernetes(case: dict) -> None:
    if not case["ok"]:
        with pytest.raises(QuantityError):
            Quantity.parse(case["input"])
        return
    q = Quantity.parse(case["input"])
    assert str(q) == case["string"]
    assert q.canonical() == case["canonical"]
    assert q.amount == Fraction(Decimal(case["exact"]))
    # Go's Value()/MilliValue() are only meaningful where the result fits an int64, and they
    # misround some negative amounts (-0.1n gives +1); gpufleet's amounts are never negative.
    if q.amount >= 0 and q.value() in INT64:
        assert q.value() == case.get("value", 0)
    if q.amount >= 0 and q.milli_value() in INT64:
        assert q.milli_value() == case.get("milli", 0)


def test_golden_covers_the_interesting_cases() -> None:
    """The golden file must keep exercising both paths and every format."""
    parsed = [Quantity.parse(c["input"]) for c in GOLDEN if c["ok"]]
    assert len(GOLDEN) > 2000
    assert {q.format for q in parsed} == set(Format)
    assert any(str(q) != q.canonical() for q in parsed)  # kept spellings
    assert sum(not c["ok"] for c in GOLDEN) >= 15


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("24Gi", "24Gi"),
        ("16384Mi", "16Gi"),
        ("1.5Gi", "1536Mi"),
        ("0.5", "500m"),
        ("1500m", "1500m"),
        ("2e9", "2e9"),
        ("8Ei", "9223372036854775807"),
    ],
)
def test_everyday_spellings(text: str, canonical: str) -> None:
    assert Quantity.parse(text).canonical() == canonical


@pytest.mark.parametrize("bad", ["", "1K", "1ki", "Gi1", "1.5.5", " 1", "1e", "1e1.5", "0x10"])
def test_refuses_with_a_message_naming_the_rule(bad: str) -> None:
    with pytest.raises(QuantityError, match="quantity"):
        Quantity.parse(bad)


def test_int_or_string_values() -> None:
    assert parse_quantity(2147483648) == parse_quantity("2Gi")
    with pytest.raises(QuantityError, match="string or an integer"):
        parse_quantity(True)


def test_comparison_never_expands_huge_exponents() -> None:
    huge, tiny = Quantity.parse("1e999999999"), Quantity.parse("1e-999999999")
    assert tiny == Quantity.parse("1n")  # rounded up to the smallest amount, 1n
    assert huge > Quantity.parse("8Ei") > Quantity.parse("-1e999999999")
    assert huge.canonical() == "1e999999999"
    assert hash(Quantity.parse("1k")) == hash(Quantity.parse("1000"))


# -- properties --------------------------------------------------------------------------------

_number = st.from_regex(r"\A[+-]?([0-9]{1,20}(\.[0-9]{0,12})?|\.[0-9]{1,12})\Z")
_suffix = st.sampled_from(
    ["", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
) | st.integers(-30, 30).map(lambda e: f"e{e}")
quantity_text = st.builds(lambda n, s: n + s, _number, _suffix)


@given(quantity_text)
def test_canonical_text_means_the_same_amount(text: str) -> None:
    q = Quantity.parse(text)
    again = Quantity.parse(q.canonical())
    assert again == q
    assert again.canonical() == q.canonical()  # idempotent
    assert Quantity.parse(str(q)) == q


@given(quantity_text)
def test_canonical_text_has_no_fraction_and_matches_the_kubernetes_pattern(text: str) -> None:
    canonical = Quantity.parse(text).canonical()
    assert "." not in canonical
    assert re.fullmatch(QUANTITY_PATTERN, canonical)


@given(quantity_text, quantity_text)
def test_order_matches_exact_arithmetic(a: str, b: str) -> None:
    qa, qb = Quantity.parse(a), Quantity.parse(b)
    assert (qa < qb) == (qa.amount < qb.amount)
    assert (qa == qb) == (qa.amount == qb.amount)


@given(_number, st.sampled_from(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]))
def test_binary_amounts_are_rounded_up_to_nano_and_capped(number: str, suffix: str) -> None:
    q = Quantity.parse(number + suffix)
    exponent = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}[suffix]
    exact = Fraction(Decimal(number.rstrip(".") or "0")) * 2**exponent
    nano = Fraction(1, 10**9)
    assert abs(q.amount) <= 2**63 - 1
    if abs(exact) <= 2**63 - 1:
        assert abs(q.amount) >= abs(exact)
        assert abs(q.amount) - abs(exact) < nano
