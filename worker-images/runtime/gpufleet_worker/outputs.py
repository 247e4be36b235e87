"""Checks every artifact before it is recorded: the bytes parse as their media type, and an
image or SVG has the size the run was meant to produce (a mask has its input's size)."""

from __future__ import annotations

import io
import json
import re
from xml.etree import ElementTree

from PIL import Image

from .models import JSON, PNG, SAFETENSORS, SVG, TEXT, OutputFile

SVG_ROOT = "{http://www.w3.org/2000/svg}svg"
# An SVG must not declare entities: expanding them is how XML bombs work.
DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)


class InvalidOutput(Exception):
    """A pipeline made an artifact that is not what it claims to be."""


def _check_png(file: OutputFile) -> None:
    try:
        with Image.open(io.BytesIO(file.data)) as image:
            image.verify()
            size = image.size
    except Exception as error:  # PIL raises many types for broken data
        raise InvalidOutput(f"{file.name}: not a readable PNG ({error})") from None
    if file.size is not None and size != file.size:
        raise InvalidOutput(f"{file.name}: {size[0]}x{size[1]}, expected {file.size[0]}x{file.size[1]}")


def _check_svg(file: OutputFile) -> None:
    if DOCTYPE.search(file.data):
        raise InvalidOutput(f"{file.name}: an SVG with a DOCTYPE is refused")
    try:
        root = ElementTree.fromstring(file.data)
    except ElementTree.ParseError as error:
        raise InvalidOutput(f"{file.name}: not well-formed XML ({error})") from None
    if root.tag != SVG_ROOT:
        raise InvalidOutput(f"{file.name}: the root element is {root.tag}, not an SVG <svg>")
    if file.size is not None:
        size = (root.get("width"), root.get("height"))
        if size != (str(file.size[0]), str(file.size[1])):
            raise InvalidOutput(
                f"{file.name}: width/height {size[0]}x{size[1]}, expected {file.size[0]}x{file.size[1]}"
            )


def _check_json(file: OutputFile) -> None:
    try:
        json.loads(file.data)
    except ValueError as error:
        raise InvalidOutput(f"{file.name}: not JSON ({error})") from None


def _check_text(file: OutputFile) -> None:
    try:
        file.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidOutput(f"{file.name}: not UTF-8 ({error})") from None


def _check_safetensors(file: OutputFile) -> None:
    from safetensors.torch import load

    try:
        tensors = load(file.data)
    except Exception as error:  # safetensors raises its own and builtin types for broken data
        raise InvalidOutput(f"{file.name}: not a readable safetensors file ({error})") from None
    if not tensors:
        raise InvalidOutput(f"{file.name}: holds no tensors")


CHECKS = {
    PNG: _check_png,
    SVG: _check_svg,
    JSON: _check_json,
    TEXT: _check_text,
    SAFETENSORS: _check_safetensors,
}


def check_output(file: OutputFile) -> None:
    """Raises InvalidOutput unless ``file`` is a well-formed artifact of its media type."""
    check = CHECKS.get(file.media_type)
    if check is None:
        raise InvalidOutput(f"{file.name}: no check for media type {file.media_type}")
    check(file)
