"""Bearer tokens from a mounted file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpufleet_worker.auth import TokenError, TokenFile


def test_only_the_exact_bearer_token_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    tokens = TokenFile(tmp_path / "token")
    assert tokens.accepts("Bearer s3cret-token")
    assert tokens.accepts("bearer s3cret-token")
    for header in (
        None,
        "",
        "Bearer",
        "Bearer s3cret",
        "Bearer s3cret-token2",
        "Basic s3cret-token",
        "s3cret-token",
    ):
        assert not tokens.accepts(header), header


def test_a_rotated_token_replaces_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old-token")
    tokens = TokenFile(path)
    assert tokens.accepts("Bearer old-token")
    path.write_text("new-token-longer")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tokens.accepts("Bearer new-token-longer")
    assert not tokens.accepts("Bearer old-token")


def test_a_missing_or_empty_token_file_stops_the_worker(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="tokenFile"):
        TokenFile(tmp_path / "absent")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="is empty"):
        TokenFile(tmp_path / "empty")
