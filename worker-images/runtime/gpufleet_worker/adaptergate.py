"""Turns on one pipeline whose LoRA adapters are switched per run.

A base pipeline's LoRAs are adapters on its own modules, so the adapter a run draws with is
state of the shared pipeline. Runs that want the same adapter (or none: the base itself) run
together; a run that wants another one waits until they have ended, then the adapter is
switched. Waiting is first come, first served, so a stream of runs of one adapter cannot
starve another. Attaching an adapter changes the modules, so it waits until no run is in
progress; detaching one is only recorded, and done the next time the pipeline is idle, so
an eviction never waits for a run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("gpufleet_worker")

_UNKNOWN = object()  # the pipeline's active adapter after an attach: to be set again
_ALONE = object()  # what an attach wants: the pipeline to itself


@dataclass
class AdapterGate:
    activate: Callable[[str | None], None]  # makes this adapter (None: none) the active one
    remove: Callable[[str], None]  # deletes a detached adapter's weights
    _condition: threading.Condition = field(default_factory=threading.Condition)
    _running: int = 0  # runs in progress, all with the adapter ``_active``
    _active: object = None
    _alone: bool = False  # an attach is changing the modules
    _queue: list[tuple[object, object]] = field(default_factory=list)  # (ticket, wanted), in order
    _detached: set[str] = field(default_factory=set)

    @contextmanager
    def using(self, adapter: str | None) -> Iterator[None]:
        """Holds the pipeline with ``adapter`` active (None: the base alone) for one run."""
        self._enter(adapter)
        try:
            yield
        finally:
            self._leave(alone=False)

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Holds the pipeline alone, to attach an adapter."""
        self._enter(_ALONE)
        try:
            yield
        finally:
            self._leave(alone=True)

    def detach(self, adapter: str) -> None:
        """Deletes ``adapter`` once no run is in progress (at once when none is)."""
        with self._condition:
            self._detached.add(adapter)
            if not self._running and not self._alone:
                self._tidy()

    def _enter(self, wanted: object) -> None:
        ticket = object()
        with self._condition:
            self._queue.append((ticket, wanted))
            try:
                self._condition.wait_for(lambda: self._may_enter(ticket, wanted))
            finally:
                self._queue = [entry for entry in self._queue if entry[0] is not ticket]
            try:
                if not self._running:
                    self._tidy()
                if wanted is _ALONE:
                    self._alone = True
                    return
                if not self._running and self._active != wanted:
                    self._active = _UNKNOWN
                    self.activate(wanted)  # type: ignore[arg-type]  # a name or None here
                    self._active = wanted
                self._running += 1
            finally:
                self._condition.notify_all()

    def _may_enter(self, ticket: object, wanted: object) -> bool:
        if self._alone:
            return False
        if wanted is _ALONE:
            return not self._running and self._queue[0][0] is ticket
        if self._running and self._active != wanted:
            return False
        # First come, first served: everyone queued ahead must be able to share with it.
        for waiting, wants in self._queue:
            if waiting is ticket:
                return True
            if wants is _ALONE or wants != wanted:
                return False
        return True

    def _leave(self, alone: bool) -> None:
        with self._condition:
            if alone:
                self._alone, self._active = False, _UNKNOWN
            else:
                self._running -= 1
            if not self._running:
                self._tidy()
            self._condition.notify_all()

    def _tidy(self) -> None:
        """Deletes detached adapters (condition held, no run in progress)."""
        for adapter in sorted(self._detached):
            try:
                self.remove(adapter)
            except Exception:  # its weights stay until the base goes; runs go on
                log.exception("deleting adapter %s", adapter)
            if self._active == adapter:
                self._active = _UNKNOWN
        self._detached.clear()
