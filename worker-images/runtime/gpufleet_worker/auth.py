"""Bearer-token check against the pool's token, read from a mounted file."""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

from .protocol import AUTH_SCHEME


class TokenError(RuntimeError):
    pass


class TokenFile:
    """The token in ``path``, re-read when the file changes (a rotated Secret is picked up
    without a restart)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token = b""
        self.current()  # fail at start-up, not on the first request

    def current(self) -> bytes:
        try:
            stat = self._path.stat()
        except OSError as error:
            raise TokenError(f"tokenFile {self._path}: {error.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                token = self._path.read_bytes().strip()
                if not token:
                    raise TokenError(f"tokenFile {self._path} is empty")
                self._token, self._stamp = token, stamp
            return self._token

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (constant time)."""
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != AUTH_SCHEME.lower():
            return False
        return hmac.compare_digest(presented.strip().encode(), self.current())
