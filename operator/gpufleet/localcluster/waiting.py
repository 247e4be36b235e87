"""Waiting with a deadline, and an error that shows what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StopWaiting(Exception):
    """Raised by what is being waited on when waiting longer cannot help (a process died)."""


class WaitTimeout(AssertionError):
    """A wait ran out; the message carries the last observed value."""


def wait_for(
    fetch: Callable[[], T],
    predicate: Callable[[T], bool],
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
    describe: Callable[[T], str] = repr,
) -> T:
    """Calls ``fetch`` until ``predicate`` holds for its result; returns that result.

    On timeout raises :class:`WaitTimeout` naming ``what`` with the last value seen
    (through ``describe``) or the last error ``fetch`` raised.
    """
    deadline = time.monotonic() + timeout
    last: str = "nothing fetched yet"
    while True:
        try:
            value = fetch()
            if predicate(value):
                return value
            last = describe(value)
        except StopWaiting:
            raise
        except Exception as error:  # what we wait for may not exist yet
            last = f"error: {type(error).__name__}: {error}"
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last}")
        time.sleep(interval)
