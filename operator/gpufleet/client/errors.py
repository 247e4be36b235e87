"""Errors the client raises, each with a message a user can act on."""

from __future__ import annotations

import json
from typing import Any


class ClientError(Exception):
    """Something the user asked for cannot be done; the message says why and what to change."""


class ManifestError(ClientError):
    """A manifest file is missing, unreadable, or not GenerationJobs."""


class NotFoundError(ClientError):
    pass


class ForbiddenError(ClientError):
    """The user's RBAC lacks a verb on a resource."""


class InvalidError(ClientError):
    """The API server refused an object; the message is the server's, naming the field."""


class S3Error(ClientError):
    """Artifacts cannot be read: no credentials, no access, or missing objects."""


class ChecksumError(S3Error):
    """A downloaded artifact's sha256 differs from the one the job recorded."""


def _server_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason or exc)
    return str(body.get("message") or exc.reason or exc)


def api_error(exc: Any, verb: str, resource: str, namespace: str, name: str = "") -> ClientError:
    """A ClientError for a kubernetes ``ApiException`` from ``verb`` on ``resource``."""
    message = _server_message(exc)
    status = getattr(exc, "status", None)
    if status == 404:
        what = f'{resource} "{name}"' if name else resource
        return NotFoundError(f'{what} not found in namespace "{namespace}"')
    if status in (401, 403):
        return ForbiddenError(
            f'no permission to {verb} {resource} in namespace "{namespace}": {message}\n'
            f"RBAC missing: verb {verb!r} on resource {resource!r}; ask an admin to bind you the "
            "built-in 'edit' role (submit, cancel, delete) or 'view' role (get, list, watch) there"
        )
    if status == 422:
        return InvalidError(message)
    if status == 409:
        return InvalidError(message)
    return ClientError(f"{verb} {resource} {name}: API server answered {status}: {message}")
