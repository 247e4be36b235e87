"""Kubernetes ``resource.Quantity``: parsed, compared and printed exactly as Kubernetes does.

A quantity is ``<sign><digits>[.<digits>]<suffix>`` where the suffix is binary
(``Ki Mi Gi Ti Pi Ei``, powers of 1024), decimal (``n u m k M G T P E``) or a decimal
exponent (``e3``, ``E-2``). ``24Gi``, ``16384Mi``, ``1.5G``, ``500m`` and ``2e9`` are all
quantities.

This module follows ``k8s.io/apimachinery/pkg/api/resource`` (v0.36) rule by rule,
including its quirks, because the same text must mean the same amount here, in the API
server's CEL ``quantity()`` library and in the pods the operator creates:

- values are rounded *up* (away from zero) to a multiple of 1n, so "some" never becomes 0;
- binary-suffixed values are capped at 2**63-1 (decimal ones are not);
- ``"+"``, ``"-"`` and ``"."`` parse as 0, ``"1."`` as 1 (the API server's OpenAPI pattern
  for quantities refuses those spellings; ``QUANTITY_PATTERN`` is that pattern);
- ``str(q)`` is what Kubernetes prints (``Quantity.String()``): the input text itself when
  Kubernetes deems it canonical already, otherwise the canonical form, which
  ``canonical()`` always returns (``1.5Gi`` -> ``1536Mi``, ``0.5`` -> ``500m``).
"""

from __future__ import annotations

import functools
from enum import StrEnum
from fractions import Fraction

# The OpenAPI pattern Kubernetes publishes for resource.Quantity (and controller-gen puts in
# CRDs). It is stricter than the parser in a few spellings, never looser except for
# fractional exponents ("1e1.5"), which ``parse`` refuses.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

_INT64_MAX = 2**63 - 1
_INT32_MIN, _INT32_SPAN = -(2**31), 2**32
_NANO = -9  # the finest scale a quantity keeps
_MAX_INT64_DIGITS = 18  # digits that always fit an int64 (Go: maxInt64Factors)
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity; the message says which rule it broke."""


class Format(StrEnum):
    """How a quantity was written, which decides how it is printed back."""

    DECIMAL_EXPONENT = "DecimalExponent"  # 12e6
    BINARY_SI = "BinarySI"  # 12Mi
    DECIMAL_SI = "DecimalSI"  # 12M


_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX_FOR_EXPONENT = {e: s for s, e in _DECIMAL_SUFFIXES.items()}
_BINARY_SUFFIX_FOR_EXPONENT = {e: s for s, e in _BINARY_SUFFIXES.items()}
_BINARY_SUFFIX_FOR_EXPONENT[0] = ""


def _wrap_int32(value: int) -> int:
    """Go's int32(x) conversion: keep the low 32 bits, two's complement."""
    return (value - _INT32_MIN) % _INT32_SPAN + _INT32_MIN


def _ceil_away_from_zero(mantissa: int, drop_digits: int) -> int:
    """mantissa / 10**drop_digits rounded away from zero (inf.RoundUp), drop_digits > 0."""
    magnitude = abs(mantissa)
    if len(str(magnitude)) <= drop_digits:  # 0 < |value| < 1 (cheap even for huge exponents)
        rounded = 1 if magnitude else 0
    else:
        quotient, remainder = divmod(magnitude, 10**drop_digits)
        rounded = quotient + (1 if remainder else 0)
    return -rounded if mantissa < 0 else rounded


def _split(text: str) -> tuple[bool, str, str, str, str]:
    """Go's parseQuantityString: (positive, value, numerator, denominator, suffix)."""
    positive, pos, end = True, 0, len(text)
    if text[:1] in ("-", "+"):
        positive = text[0] == "+"
        pos = 1
    while pos < end and text[pos] == "0":  # leading zeros
        pos += 1
    if pos == end:
        return positive, "0", "0", "", ""
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    numerator = text[start:pos] or "0"
    if pos == end:
        return positive, text, numerator, "", ""
    denominator = ""
    if text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denominator = text[start:pos]
        if pos == end:
            return positive, text, numerator, denominator, ""
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        raise QuantityError(
            f"quantity {text!r}: unexpected {text[pos]!r}; a quantity is a number with an "
            "optional suffix (Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3)"
        )
    return positive, value, numerator, denominator, text[suffix_start:]


def _interpret_suffix(text: str, suffix: str) -> tuple[int, int, Format]:
    """(base, exponent, format) of a suffix."""
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix], Format.DECIMAL_SI
    if suffix in _BINARY_SUFFIXES:
        return 2, _BINARY_SUFFIXES[suffix], Format.BINARY_SI
    if len(suffix) > 1 and suffix[0] in "eE":
        digits = suffix[1:]
        unsigned = digits[1:] if digits[0] in "+-" else digits
        if unsigned and unsigned.isdigit() and -(2**63) <= int(digits) < 2**63:
            return 10, _wrap_int32(int(digits)), Format.DECIMAL_EXPONENT
    raise QuantityError(
        f"quantity {text!r}: unknown suffix {suffix!r}; use Ki Mi Gi Ti Pi Ei, "
        "n u m k M G T P E, or an exponent like e3"
    )


def _decimal_digits(value: str) -> tuple[int, int]:
    """inf.Dec.SetString of the number part: (unscaled, scale) with value = unscaled/10**scale."""
    sign = -1 if value[:1] == "-" else 1
    body = value.lstrip("+-")
    whole, _, fraction = body.partition(".")
    if not (whole + fraction):
        raise QuantityError(f"quantity {value!r}: no digits in the numeric part")
    return sign * int(whole + fraction), len(fraction)


@functools.total_ordering
class Quantity:
    """An exact amount parsed from Kubernetes quantity text; compare, add up and print it."""

    __slots__ = ("_cached_text", "_exponent", "_mantissa", "format")

    def __init__(self, mantissa: int, exponent: int, fmt: Format, cached_text: str | None = None):
        # value == mantissa * 10**exponent; the exponent may be huge ("1e999999999").
        self._mantissa = mantissa
        self._exponent = exponent
        self.format = fmt
        self._cached_text = cached_text

    # -- parsing ------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """Parse quantity text as ``resource.ParseQuantity`` does; ``QuantityError`` if invalid."""
        return _parse_text(text)

    @classmethod
    def _parse(cls, text: str) -> Quantity:
        if not text:
            raise QuantityError("quantity must not be empty")
        if text == "0":
            return cls(0, 0, Format.DECIMAL_SI, "0")
        positive, value, numerator, denominator, suffix = _split(text)
        base, exponent, fmt = _interpret_suffix(text, suffix)

        # Go's int64 fast path; it decides which inputs keep their own spelling as String().
        if fmt is Format.BINARY_SI:
            scale = 0
            if len(denominator) == 0:
                multiplier = 1 << exponent
                precision = 15 - len(numerator) - int(exponent * 3 / 10) - 1
            else:
                precision = -1
        else:
            scale, multiplier = exponent, 1
            precision = _MAX_INT64_DIGITS - len(numerator) - len(denominator)
        if precision >= 0:
            scale -= len(denominator)
            if scale >= _NANO:
                shifted = numerator + denominator
                result = int(shifted) * multiplier
                if result <= _INT64_MAX:
                    if not positive:
                        result = -result
                    if fmt is Format.BINARY_SI:
                        canonical_spelling = exponent % 10 == 0 and int(shifted) & 0x07 != 0
                    else:
                        canonical_spelling = (
                            scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
                        )
                    return cls(result, scale, fmt, text if canonical_spelling else None)

        # The arbitrary-precision path (inf.Dec).
        unscaled, dec_scale = _decimal_digits(value)
        if base == 10:
            dec_scale = _wrap_int32(dec_scale - exponent)
        else:
            unscaled <<= exponent
        if dec_scale > -_NANO and unscaled != 0:
            unscaled = _ceil_away_from_zero(unscaled, dec_scale + _NANO)
            dec_scale = -_NANO
        mantissa, value_exponent = unscaled, -dec_scale
        if fmt is Format.BINARY_SI:
            magnitude = Fraction(abs(mantissa)) * Fraction(10) ** value_exponent
            if magnitude > _INT64_MAX:
                mantissa, value_exponent = (_INT64_MAX if mantissa > 0 else -_INT64_MAX), 0
            elif 0 < magnitude < 1:
                fmt = Format.DECIMAL_SI
        return cls(mantissa, value_exponent, fmt)

    # -- value --------------------------------------------------------------------------------

    @property
    def amount(self) -> Fraction:
        """The exact value."""
        return self._mantissa * Fraction(10) ** self._exponent

    def value(self) -> int:
        """The value as an integer, rounded up (away from zero) like ``Quantity.Value()``."""
        return self.scaled_value(0)

    def milli_value(self) -> int:
        """The value in thousandths, rounded up like ``Quantity.MilliValue()``."""
        return self.scaled_value(-3)

    def scaled_value(self, scale: int) -> int:
        """The value in units of 10**scale, rounded away from zero."""
        shift = self._exponent - scale
        if shift >= 0:
            return self._mantissa * 10**shift
        return _ceil_away_from_zero(self._mantissa, -shift)

    def is_zero(self) -> bool:
        return self._mantissa == 0

    def _normalized(self) -> tuple[int, int]:
        """(mantissa without trailing zeros, exponent): equal values have equal pairs."""
        number, exponent = self._mantissa, self._exponent
        if number == 0:
            return 0, 0
        while number % 10 == 0:
            number //= 10
            exponent += 1
        return number, exponent

    def compare(self, other: Quantity) -> int:
        """-1, 0 or 1, like ``Quantity.Cmp``; never expands a huge exponent."""
        (a, a_exp), (b, b_exp) = self._normalized(), other._normalized()
        if (a > 0) != (b > 0) or a == 0 or b == 0:
            return (a > b) - (a < b)
        # Same sign: the decimal order of magnitude decides unless it is equal, and then
        # the exponents differ by fewer digits than the mantissas have.
        a_order, b_order = len(str(abs(a))) + a_exp, len(str(abs(b))) + b_exp
        if a_order != b_order:
            larger = (a_order > b_order) == (a > 0)
            return 1 if larger else -1
        common = min(a_exp, b_exp)
        a, b = a * 10 ** (a_exp - common), b * 10 ** (b_exp - common)
        return (a > b) - (a < b)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantity):
            return NotImplemented
        return self.compare(other) == 0

    def __lt__(self, other: Quantity) -> bool:
        return self.compare(other) < 0

    def __hash__(self) -> int:
        return hash(self._normalized())

    # -- printing -----------------------------------------------------------------------------

    def canonical(self) -> str:
        """The canonical text (``CanonicalizeBytes``): no fraction, the largest suffix exact."""
        if self._mantissa == 0:
            return "0"
        fmt = self.format
        if fmt is Format.BINARY_SI:
            amount = self.amount
            if -1024 < amount < 1024 or amount.denominator != 1:
                fmt = Format.DECIMAL_SI  # avoids rounding, and confusion
            else:
                number, times = int(amount), 0
                while number % 1024 == 0:
                    number //= 1024
                    times += 1
                return f"{number}{_BINARY_SUFFIX_FOR_EXPONENT[times * 10]}"
        number, exponent = self._mantissa, self._exponent
        while number % 10 == 0:
            number //= 10
            exponent += 1
        step_down = exponent % 3  # down to a multiple of 3, as Go does
        number *= 10**step_down
        exponent -= step_down
        if fmt is Format.DECIMAL_EXPONENT:
            return f"{number}e{exponent}" if exponent else str(number)
        # Decimal exponents beyond 10**18 have no suffix; Kubernetes then prints none either.
        return f"{number}{_DECIMAL_SUFFIX_FOR_EXPONENT.get(exponent, '')}"

    def __str__(self) -> str:
        return self._cached_text if self._cached_text is not None else self.canonical()

    def __repr__(self) -> str:
        return f"Quantity({str(self)!r})"


# A round reads the same few spellings ("24Gi", "512Mi") thousands of times; a Quantity never
# changes once made, so one parse per spelling serves them all.
@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Quantity:
    return Quantity._parse(text)


def parse_quantity(value: str | int) -> Quantity:
    """A quantity from CRD int-or-string data: an integer is a plain number of units."""
    if isinstance(value, bool):  # bool is an int in Python, never in a manifest
        raise QuantityError(f"quantity must be a string or an integer, not {value!r}")
    return Quantity.parse(str(value) if isinstance(value, int) else value)
