"""The adapter gate: runs with the same adapter share the pipeline, another adapter waits its
turn (first come, first served), attaches wait for no run, detaches wait for an idle moment."""

from __future__ import annotations

import threading
from collections.abc import Callable

from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker.adaptergate import AdapterGate


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = AdapterGate(
            activate=lambda a: self.calls.append(f"activate {a}"),
            remove=lambda a: self.calls.append(f"remove {a}"),
        )

    def hold(self, adapter: str | None) -> tuple[threading.Event, threading.Event, threading.Thread]:
        """A run of ``adapter`` that stays in until its ``release`` is set."""
        entered, release = threading.Event(), threading.Event()

        def body() -> None:
            with self.gate.using(adapter):
                self.calls.append(f"run {adapter}")
                entered.set()
                release.wait(10)

        thread = threading.Thread(target=body)
        thread.start()
        return entered, release, thread

    def queued(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.gate._queue) == count


def test_runs_of_one_adapter_share_and_another_waits_its_turn_first_come_first_served() -> None:
    recorder = Recorder()
    a1 = recorder.hold("a")
    a2 = recorder.hold("a")
    assert a1[0].wait(5) and a2[0].wait(5)  # together
    b = recorder.hold("b")
    wait_for(recorder.queued(1), bool, 5, what="b waiting")
    a3 = recorder.hold("a")  # same adapter as the runs in progress, but b came first
    wait_for(recorder.queued(2), bool, 5, what="a3 waiting behind b")
    assert not b[0].is_set() and not a3[0].is_set()
    a1[1].set()
    a2[1].set()
    assert b[0].wait(5) and not a3[0].is_set()
    b[1].set()
    assert a3[0].wait(5)
    a3[1].set()
    for _, _, thread in (a1, a2, b, a3):
        thread.join(5)
    assert recorder.calls == ["activate a", "run a", "run a", "activate b", "run b", "activate a", "run a"]


def test_an_attach_waits_for_no_run_and_a_detach_for_an_idle_moment() -> None:
    recorder = Recorder()
    entered, release, thread = recorder.hold(None)
    assert entered.wait(5)
    recorder.gate.detach("old")  # a run is in progress: only recorded
    attached = threading.Event()

    def attach() -> None:
        with recorder.gate.changing():
            recorder.calls.append("attach new")
        attached.set()

    attacher = threading.Thread(target=attach)
    attacher.start()
    wait_for(recorder.queued(1), bool, 5, what="the attach waiting")
    assert "remove old" not in recorder.calls and not attached.is_set()
    release.set()
    thread.join(5)
    assert attached.wait(5)
    attacher.join(5)
    # The base run first (a fresh pipeline has no adapter active), the pending delete, the attach.
    assert recorder.calls == ["run None", "remove old", "attach new"]
    with recorder.gate.using(None):  # after an attach the active adapter is set again
        pass
    assert recorder.calls[-1] == "activate None"
