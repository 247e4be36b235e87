"""Pool rounds in-process against FakeKube and FakeWorkers: each fault the controller's old
structure let through, and the drain of a large queue with its write budget."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gpufleet_worker.protocol as protocol
from gpufleet.controller import handlers, metrics
from gpufleet.core import breaker

from .fakes import NAMESPACE, FakeWorker, Harness


class Memo:
    """kopf's memo as the handlers receive it."""

    def __init__(self, fleet: Harness) -> None:
        self.operator = fleet.op


def in_loop(scenario: Callable[[Harness], Awaitable[None]]) -> Callable[[], None]:
    """A sync test that runs ``scenario`` on a fresh Harness in its own event loop."""

    def test() -> None:
        async def run() -> None:
            harness = Harness()
            try:
                await asyncio.wait_for(scenario(harness), 120)
            finally:
                await harness.close()

        asyncio.run(run())

    test.__name__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test


async def rounds(fleet: Harness, count: int, pool: str = "sd") -> None:
    for _ in range(count):
        await fleet.round(pool)
        await fleet.settle()


async def running_on_a_held_worker(fleet: Harness, name: str = "a", **spec: Any) -> FakeWorker:
    """One worker whose runs wait to be released, and job ``name`` dispatched to it."""
    [worker] = fleet.pool()
    worker.hold = True
    fleet.job(name, **spec)
    await fleet.round()  # dispatched; its follower waits for the run's result
    assert fleet.status(name)["phase"] == "Dispatched"
    return worker


@in_loop
async def test_a_job_is_dispatched_followed_and_succeeds_in_three_status_writes(fleet):
    [worker] = fleet.pool()
    fleet.job("a")
    await rounds(fleet, 2)
    status = fleet.status("a")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert worker.submits == [protocol.run_id(f"{NAMESPACE}/a", 1)]
    # Dispatched by the round that first saw it (no Queued), then Succeeded: no Running write
    # for a run that ends within a progress interval.
    assert fleet.kube.status_writes["a"] == 2


@in_loop
async def test_a_refused_task_fails_the_job_instead_of_requeueing_it_for_ever(fleet):
    [worker] = fleet.pool()
    worker.refuse = (422, protocol.Reason.UNSUPPORTED_TASK, "this worker's runtime does not do segment")
    fleet.job("a")
    await rounds(fleet, 6)
    status = fleet.status("a")
    assert status["phase"] == "Failed"
    assert status["reason"] == "TaskNotServed"
    assert "does not do segment" in status["message"]
    assert len(worker.submits) == 1
    assert ("a", "TaskNotServed") in {(name, reason) for name, reason, _ in fleet.kube.events}


@in_loop
async def test_the_job_says_whether_its_run_found_its_model_warm_or_waited_for_a_load(fleet):
    [worker] = fleet.pool()
    worker.model_load = protocol.ModelLoad(warm=False, source="disk", seconds=2.5)
    fleet.job("cold")
    await rounds(fleet, 2)
    assert fleet.status("cold")["modelLoad"] == {"warm": False, "seconds": 2.5}
    worker.model_load = protocol.ModelLoad(warm=True, source="resident", seconds=0)
    fleet.job("warm")
    await rounds(fleet, 2)
    assert fleet.status("warm")["modelLoad"] == {"warm": True, "seconds": 0}


@in_loop
async def test_a_model_that_failed_on_its_worker_fails_the_job_at_once(fleet):
    [worker] = fleet.pool()
    worker.outcome = protocol.Reason.MODEL_FAILED
    fleet.job("a", retry={"maxAttempts": 3, "backoffSeconds": 1})
    await rounds(fleet, 2)
    status = fleet.status("a")
    assert (status["phase"], status["reason"], status["attempts"]) == ("Failed", "ModelFailed", 1)
    health = fleet.op.pool(NAMESPACE, "sd").workers[worker.name]
    assert health.failures_in_a_row == 0  # the model's fault, not the worker's
    # A worker that refuses the model because it failed there: the job fails too, no retry.
    worker.refuse = (422, protocol.Reason.MODEL_FAILED, "model tiny-sd: s3://models/sd: NoSuchKey")
    fleet.job("b")
    await rounds(fleet, 3)
    assert (fleet.status("b")["phase"], fleet.status("b")["reason"]) == ("Failed", "ModelFailed")
    assert "NoSuchKey" in fleet.status("b")["message"]


@in_loop
async def test_jobs_keep_away_from_a_worker_where_their_model_failed(fleet):
    failed, healthy = fleet.pool(workers=2)
    failed.model_state = protocol.ModelState.FAILED
    healthy.model_state = protocol.ModelState.AVAILABLE  # resident nowhere: no preference either way
    for name in ("a", "b", "c"):
        fleet.job(name)
    await rounds(fleet, 2)
    assert failed.submits == [] and len(healthy.submits) == 3
    assert all(fleet.status(name)["phase"] == "Succeeded" for name in ("a", "b", "c"))


@in_loop
async def test_a_busy_worker_refusal_backs_off_and_keeps_the_attempt_number(fleet):
    [worker] = fleet.pool()
    worker.refuse = (409, protocol.Reason.TOO_MANY_JOBS, "every slot is taken")
    fleet.job("a")
    await rounds(fleet, 1)
    status = fleet.status("a")
    assert (status["phase"], status["attempts"]) == ("Queued", 0)
    assert "every slot is taken" in status["message"]
    await rounds(fleet, 5)  # the clock does not move: the backoff holds the job back
    assert len(worker.submits) == 1
    fleet.clock.now += 1.5
    worker.refuse = None
    await rounds(fleet, 2)
    assert fleet.status("a")["phase"] == "Succeeded"
    assert fleet.status("a")["attempts"] == 1


@in_loop
async def test_a_round_with_a_stale_copy_does_not_replay_a_finished_run(fleet):
    worker = await running_on_a_held_worker(fleet)
    # The next round snapshots the job as running, then waits on the worker's inventory...
    worker.inventory_gate = asyncio.Event()
    worker.inventory_asked.clear()
    stale_round = asyncio.create_task(fleet.round())
    await worker.inventory_asked.wait()
    # ...while the run ends and its follower writes the outcome.
    worker.released.set()
    await fleet.settle()
    assert fleet.status("a")["phase"] == "Succeeded"
    worker.inventory_gate.set()
    await stale_round
    await fleet.settle()
    assert fleet.status("a")["phase"] == "Succeeded"
    assert [reason for name, reason, _ in fleet.kube.events if name == "a"].count("Completed") == 1
    assert fleet.kube.status_writes["a"] == 2


@in_loop
async def test_a_worker_whose_runs_keep_failing_gets_no_jobs_and_the_pool_says_so(fleet):
    [bad] = fleet.pool(max_jobs_per_gpu=1)  # one run at a time: failures come one by one
    bad.outcome = protocol.Reason.INTERNAL_ERROR
    for index in range(4):
        fleet.job(f"j{index}", retry={"maxAttempts": 5, "backoffSeconds": 1})
    for _ in range(6):
        await rounds(fleet, 1)
        fleet.clock.now += 2  # past each retry's backoff, well within the breaker's cooldown
    health = fleet.op.pool(NAMESPACE, "sd").workers[bad.name]
    assert breaker.state(health, fleet.clock(), fleet.op.breaker) is breaker.BreakerState.OPEN
    submitted = len(bad.submits)
    assert submitted == fleet.op.breaker.threshold
    pool_status = fleet.kube.objects[("workerpools", NAMESPACE, "sd")]["status"]
    assert pool_status["conditions"][0]["status"] == "False"  # Ready
    assert any(
        c["reason"] == "WorkersFailing" and bad.name in c["message"] for c in pool_status["conditions"]
    ), pool_status["conditions"]
    assert any(reason == "WorkersFailing" for _, reason, _ in fleet.kube.events)
    await rounds(fleet, 3)
    assert len(bad.submits) == submitted  # open: nothing more for it
    # After the cooldown one probe goes; it fails too, so the worker is replaced.
    fleet.clock.now += fleet.op.breaker.cooldown_seconds
    await rounds(fleet, 3)
    assert len(bad.submits) == submitted + 1
    assert bad.name in fleet.kube.deleted_pods


def fleet_samples(op) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What a scrape of the operator's fleet collector would show, by metric name."""
    registry = CollectorRegistry()
    registry.register(metrics.FleetCollector(op))
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


@in_loop
async def test_a_pools_series_show_its_round_and_go_when_it_is_deleted(fleet):
    [worker] = fleet.pool()
    fleet.job("a")
    await rounds(fleet, 2)
    assert fleet.status("a")["phase"] == "Succeeded"
    series = fleet_samples(fleet.op)
    pool = {"namespace": NAMESPACE, "pool": "sd"}
    assert series["gpufleet_queue_depth"] == [(pool, 0.0)]
    assert series["gpufleet_pool_desired_workers"] == [(pool, 1.0)]
    assert series["gpufleet_pool_ready_workers"] == [(pool, 1.0)]
    [(gpu, total)] = series["gpufleet_gpu_vram_total_bytes"]
    assert gpu["pod"] == worker.name and gpu["gpu"] == "0" and gpu["UUID"].startswith("GPU-")
    assert total == worker.inventory().gpus[0].memory_total_bytes
    finished = {**pool, "outcome": "succeeded"}
    assert REGISTRY.get_sample_value("gpufleet_jobs_finished_total", finished)
    run = {**pool, "task": "text-to-image", "outcome": "succeeded"}
    assert REGISTRY.get_sample_value("gpufleet_job_run_seconds_count", run)
    wait = {**pool, "task": "text-to-image"}
    assert REGISTRY.get_sample_value("gpufleet_job_queue_wait_seconds_count", wait)

    await handlers.pool_event(event={"type": "DELETED"}, namespace=NAMESPACE, name="sd", memo=Memo(fleet))
    assert not [labels for found in fleet_samples(fleet.op).values() for labels, _ in found if labels]
    assert REGISTRY.get_sample_value("gpufleet_jobs_finished_total", finished) is None
    assert REGISTRY.get_sample_value("gpufleet_job_run_seconds_count", run) is None
    assert REGISTRY.get_sample_value("gpufleet_job_queue_wait_seconds_count", wait) is None


@in_loop
async def test_a_large_queue_drains_within_a_bounded_write_budget(fleet):
    workers = fleet.pool(workers=4, max_jobs_per_gpu=32)
    jobs = 1000
    for index in range(jobs):
        fleet.job(f"j{index:05d}", vram="512Mi")
    dispatched_per_round = []
    for _ in range(200):
        before = sum(len(w.submits) for w in workers)
        await rounds(fleet, 1)
        dispatched_per_round.append(sum(len(w.submits) for w in workers) - before)
        if all(fleet.status(f"j{i:05d}").get("phase") == "Succeeded" for i in range(jobs)):
            break
    assert all(fleet.status(f"j{i:05d}").get("phase") == "Succeeded" for i in range(jobs))
    assert sum(len(w.submits) for w in workers) == jobs  # none twice
    slots = 4 * 32
    # Steady: every round after the first fills every free slot.
    assert all(count == slots for count in dispatched_per_round[:-1]), dispatched_per_round
    # Writes: Queued, Dispatched, Succeeded, plus positions rewritten only as they halve.
    per_job = fleet.kube.status_writes
    assert max(per_job.values()) <= 3 + math.ceil(math.log2(jobs)), max(per_job.values())
    assert sum(per_job.values()) <= jobs * 3 + 32 * len(dispatched_per_round)
    job_events = Counter(reason for name, reason, _ in fleet.kube.events if name != "sd")
    assert job_events == {"Dispatched": jobs, "Completed": jobs}, job_events  # Queued: in status only
    assert fleet.kube.writes["patch generationjobs"] == 0  # no finalizer, nothing but status


@in_loop
async def test_refused_worker_pods_stall_the_pool_with_one_event_until_they_are_created(fleet):
    fleet.pool(workers=0)
    pool = fleet.kube.objects[("workerpools", NAMESPACE, "sd")]
    pool["spec"]["replicas"] = 1
    fleet.op.cache.remember_pool(fleet.kube.store("workerpools", pool))
    fleet.kube.refuse_pods = 'pods "sd-0" is forbidden: no PriorityClass with name gpu-high was found'
    await rounds(fleet, 3)
    status = fleet.kube.objects[("workerpools", NAMESPACE, "sd")]["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "WorkerPodRefused")
    assert "no PriorityClass with name gpu-high" in stalled["message"]
    assert [reason for _, reason, _ in fleet.kube.events].count("WorkerPodRefused") == 1
    fleet.kube.refuse_pods = None
    await rounds(fleet, 1)
    status = fleet.kube.objects[("workerpools", NAMESPACE, "sd")]["status"]
    assert next(c for c in status["conditions"] if c["type"] == "Stalled")["status"] == "False"


@in_loop
async def test_a_running_job_whose_pool_was_deleted_goes_back_to_pending_naming_it(fleet):
    await running_on_a_held_worker(fleet)
    # The pool goes while no round or follower is looking (as when it is deleted while the
    # operator is down): the follower stops, the orphan sweep finds the job.
    fleet.op.followers.stop((NAMESPACE, "a"))
    fleet.op.cache.forget_pool(NAMESPACE, "sd")
    await handlers.orphan(fleet.op, fleet.op.cache.jobs[(NAMESPACE, "a")])
    status = fleet.status("a")
    assert (status["phase"], status["reason"]) == ("Pending", "PoolNotFound")
    assert "deleted while attempt 1 ran on sd-0" in status["message"]
    assert "worker" not in status


@in_loop
async def test_a_train_runs_progress_reaches_the_job_status_and_gauges(fleet):
    from gpufleet.api.models import GenerationJob
    from gpufleet.controller import follow

    [worker] = fleet.pool()
    worker.hold = True
    fleet.job("lora")
    await fleet.round()
    job = GenerationJob.model_validate(fleet.kube.objects[("generationjobs", NAMESPACE, "lora")])
    sha = "cd" * 32
    prefix = f"s3://artifacts/{NAMESPACE}/lora/"
    sample = protocol.Artifact(
        name="sample-5-0.png", url=prefix + "sample-5-0.png", media_type="image/png", size_bytes=9, sha256=sha
    )
    training = protocol.TrainingProgress(
        epoch=2,
        loss=0.4,
        smoothed_loss=0.5,
        learning_rate=1e-4,
        steps_per_second=2.0,
        eta_seconds=7.6,
        checkpoints=[protocol.Checkpoint(step=5, url=f"{prefix}checkpoints/step-5/", sha256=sha)],
        samples=[sample],
    )
    progress = protocol.Progress(step=5, total_steps=20, percent=25, training=training)
    await follow.write_progress(fleet.op, job, 1, progress)
    status = fleet.status("lora")
    assert status["phase"] == "Running" and status["progress"]["step"] == 5
    assert status["training"]["smoothedLoss"] == 0.5 and status["training"]["etaSeconds"] == 8
    assert status["training"]["checkpoints"] == [
        {"step": 5, "url": f"{prefix}checkpoints/step-5/", "sha256": sha}
    ]
    assert [a["name"] for a in status["artifacts"]] == ["sample-5-0.png"]
    assert metrics.TRAINING_LOSS.labels(NAMESPACE, "lora")._value.get() == 0.5
    assert metrics.TRAINING_STEP.labels(NAMESPACE, "lora")._value.get() == 5
    metrics.forget_training(NAMESPACE, "lora")
    worker.released.set()
    await fleet.settle()


@in_loop
async def test_an_unchanged_queue_is_not_decided_again_until_the_pool_changes(fleet):
    from unittest import mock

    from gpufleet.core import jobs as jobrules

    fleet.pool(workers=0)
    for index in range(50):
        fleet.job(f"q{index:02d}")
    with mock.patch.object(jobrules, "refusal", wraps=jobrules.refusal) as refusal:
        await rounds(fleet, 2)  # each job decided, then again as its Queued write changed it
        assert fleet.status("q00")["phase"] == "Queued"
        decided = refusal.call_count
        await rounds(fleet, 3)  # nothing changed: every job's decision stands
        assert refusal.call_count == decided
        fleet.job("late")
        await rounds(fleet, 1)
        assert refusal.call_count == decided + 1  # only the new job is decided
        pool = fleet.kube.objects[("workerpools", NAMESPACE, "sd")]
        pool["spec"]["models"][0]["name"] = "other-model"
        fleet.op.cache.remember_pool(fleet.kube.store("workerpools", pool))
        await rounds(fleet, 1)
        assert refusal.call_count == decided + 1 + 51  # the pool changed: all decided again
    status = fleet.status("q07")
    assert (status["phase"], status["reason"]) == ("Pending", "ModelNotServed"), status


@in_loop
async def test_finished_jobs_are_not_decided_again_until_their_ttl_or_a_change(fleet):
    from datetime import timedelta
    from unittest import mock

    from gpufleet.controller import reconcile

    fleet.pool()
    fleet.job("kept")
    fleet.job("short-lived", ttlSecondsAfterFinished=60)
    await rounds(fleet, 2)
    assert fleet.status("kept")["phase"] == fleet.status("short-lived")["phase"] == "Succeeded"
    await rounds(fleet, 1)  # each decided once more as it is now
    with mock.patch.object(reconcile, "job_step", wraps=reconcile.job_step) as step:
        await rounds(fleet, 3)
        assert step.call_count == 0  # nothing to do for either, whatever the clock says
        later = reconcile.now_utc() + timedelta(seconds=61)
        with mock.patch.object(reconcile, "now_utc", return_value=later):
            await rounds(fleet, 1)
        # The short-lived one's time came: decided again, and deleted; the kept one was not.
        assert [call.args[1].metadata["name"] for call in step.call_args_list] == ["short-lived"]
    assert fleet.kube.writes["delete generationjobs"] == 1
    assert ("generationjobs", NAMESPACE, "short-lived") not in fleet.kube.objects
    assert ("generationjobs", NAMESPACE, "kept") in fleet.kube.objects


@in_loop
async def test_a_round_offers_placement_the_head_of_the_queue_only(fleet):
    from unittest import mock

    from gpufleet.controller import reconcile
    from gpufleet.core import dispatch

    fleet.pool(workers=1)
    for index in range(12):
        fleet.job(f"w{index:02d}")
    with (
        mock.patch.object(reconcile, "PLACEMENT_WINDOW", 5),
        mock.patch.object(dispatch, "plan", wraps=dispatch.plan) as plan,
    ):
        await fleet.round()
    offered = [job.key for job in plan.call_args.args[0]]
    assert offered == [f"{NAMESPACE}/w{index:02d}" for index in range(5)]
    assert fleet.status("w11")["phase"] == "Queued"  # behind the window: still told where it is


@in_loop
async def test_a_caption_runs_text_so_far_reaches_the_job_status_with_its_progress(fleet):
    from gpufleet.api.models import GenerationJob
    from gpufleet.controller import follow

    [worker] = fleet.pool()
    worker.hold = True
    fleet.job("cap")
    await fleet.round()
    job = GenerationJob.model_validate(fleet.kube.objects[("generationjobs", NAMESPACE, "cap")])
    progress = protocol.Progress(step=3, total_steps=64, percent=4, unit="tokens", text="a cat on")
    job = await follow.write_progress(fleet.op, job, 1, progress)
    assert fleet.status("cap")["progress"] == {"percent": 4, "step": 3, "totalSteps": 64, "text": "a cat on"}
    # A progress without text (another attempt's first, or another task's) leaves none behind.
    await follow.write_progress(fleet.op, job, 1, protocol.Progress(step=4, total_steps=64, percent=6))
    assert fleet.status("cap")["progress"] == {"percent": 6, "step": 4, "totalSteps": 64}
    worker.released.set()
    await fleet.settle()


@in_loop
async def test_an_admitted_attempt_its_worker_lost_is_not_run_again_under_its_number(fleet):
    [worker] = fleet.pool()
    worker.forget_next_run = True  # admitted, then the worker restarts before anyone looks
    fleet.job("a", retry={"maxAttempts": 3, "backoffSeconds": 1})
    await rounds(fleet, 1)
    status = fleet.status("a")
    assert (status["phase"], status["reason"]) == ("Queued", "Retrying"), status
    assert "no longer has attempt 1" in status["message"]
    fleet.clock.now += 5  # past the retry's backoff
    await rounds(fleet, 2)
    assert fleet.status("a")["phase"] == "Succeeded"
    job = f"{NAMESPACE}/a"
    assert worker.submits == [protocol.run_id(job, 1), protocol.run_id(job, 2)]  # attempt 1 once


@in_loop
async def test_an_attempt_whose_submit_got_no_answer_is_never_sent_again_under_its_number(fleet):
    [worker] = fleet.pool()
    worker.drop_next_reply = True  # the worker admitted attempt 1; its reply was lost
    fleet.job("a")
    await rounds(fleet, 1)
    status = fleet.status("a")
    assert (status["phase"], status["attempts"]) == ("Queued", 1), status
    assert "got no answer for attempt 1" in status["message"]
    job = f"{NAMESPACE}/a"
    await rounds(fleet, 1)  # the worker runs attempt 1, which no job wants now: it is stopped
    assert worker.cancels == [protocol.run_id(job, 1)]
    fleet.clock.now += 60  # past the dispatch backoff
    await rounds(fleet, 2)
    assert fleet.status("a")["phase"] == "Succeeded"
    assert worker.submits == [protocol.run_id(job, 1), protocol.run_id(job, 2)]


async def follow_dispatched_as_a_new_leader(fleet: Harness, name: str) -> None:
    """What a replica that takes over finds: a Dispatched attempt no follower of its own follows."""
    key = (NAMESPACE, name)
    fleet.op.followers.stop(key)
    fleet.op.jobs.pop(key, None)
    await fleet.round()


@in_loop
async def test_a_dispatched_attempt_whose_worker_restarted_since_is_a_new_attempt_not_a_resend(fleet):
    worker = await running_on_a_held_worker(fleet, retry={"maxAttempts": 3, "backoffSeconds": 1})
    assert fleet.status("a")["worker"]["instance"] == "first"
    worker.restart()  # attempt 1 was admitted by the process that is now gone
    await follow_dispatched_as_a_new_leader(fleet, "a")
    await fleet.settle()
    status = fleet.status("a")
    assert (status["phase"], status["reason"]) == ("Queued", "Retrying"), status
    assert "no longer has attempt 1" in status["message"]
    job = f"{NAMESPACE}/a"
    assert worker.submits == [protocol.run_id(job, 1)]  # not sent again under its number
    worker.hold = False
    fleet.clock.now += 5  # past the retry's backoff
    await rounds(fleet, 2)
    assert fleet.status("a")["phase"] == "Succeeded"
    assert worker.submits == [protocol.run_id(job, 1), protocol.run_id(job, 2)]


@in_loop
async def test_a_dispatched_attempt_that_never_reached_its_worker_is_sent_again_under_its_number(fleet):
    worker = await running_on_a_held_worker(fleet)
    job = f"{NAMESPACE}/a"
    del worker.runs[protocol.run_id(job, 1)]  # as if the replica stopped before its submit
    await follow_dispatched_as_a_new_leader(fleet, "a")
    while len(worker.submits) < 2:  # the new follower's resend (the round only starts it)
        await asyncio.sleep(0)
    assert worker.submits == [protocol.run_id(job, 1), protocol.run_id(job, 1)]
    worker.released.set()
    await fleet.settle()
    status = fleet.status("a")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 1), status


@in_loop
async def test_a_job_deleted_while_it_runs_has_its_run_stopped_by_the_next_round(fleet):
    worker = await running_on_a_held_worker(fleet)
    del fleet.kube.objects[("generationjobs", NAMESPACE, "a")]  # no finalizer holds it
    await handlers.job_event(event={"type": "DELETED"}, namespace=NAMESPACE, name="a", memo=Memo(fleet))
    assert fleet.op.cache.wakeup(NAMESPACE, "sd").is_set()  # its pool's round runs at once
    await fleet.round()
    assert worker.cancels == [protocol.run_id(f"{NAMESPACE}/a", 1)]
    assert fleet.kube.writes["patch generationjobs"] == 0
    await fleet.round()  # the run has stopped: nothing more to cancel
    assert len(worker.cancels) == 1


@in_loop
async def test_queued_jobs_are_decided_again_only_when_the_pools_spec_changes_not_its_status(fleet):
    from gpufleet.controller import reconcile

    fleet.pool(workers=0)
    for index in range(20):
        fleet.job(f"j{index}")
    decided: list[str] = []
    refusal = reconcile.jobrules.refusal

    def counting(spec, pool, classes):  # type: ignore[no-untyped-def]
        decided.append(spec.input.prompt)
        return refusal(spec, pool, classes)

    reconcile.jobrules.refusal = counting  # type: ignore[assignment]
    try:
        await rounds(fleet, 2)  # each job decided, then again as its Queued write changed it
        assert len(decided) == 40
        pool = fleet.kube.objects[("workerpools", NAMESPACE, "sd")]
        assert pool["status"]["conditions"], "the round wrote the pool's status"
        fleet.op.cache.remember_pool(pool)  # its watch echo: a new resourceVersion
        await rounds(fleet, 1)
        assert len(decided) == 40  # the same spec: every decision stands
        pool["spec"]["tasks"] = ["text-to-image", "image-to-image"]
        fleet.op.cache.remember_pool(fleet.kube.store("workerpools", pool))
        await rounds(fleet, 1)
        assert len(decided) == 60  # a new spec: each job is decided again
    finally:
        reconcile.jobrules.refusal = refusal  # type: ignore[assignment]


@in_loop
async def test_a_job_made_anew_under_a_deleted_jobs_name_runs_itself_not_the_earlier_run(fleet):
    [worker] = fleet.pool()
    fleet.job("a")
    await rounds(fleet, 2)
    earlier = fleet.kube.objects[("generationjobs", NAMESPACE, "a")]
    assert earlier["status"]["phase"] == "Succeeded"
    run = protocol.run_id(f"{NAMESPACE}/a", 1)
    del fleet.kube.objects[("generationjobs", NAMESPACE, "a")]
    await handlers.job_event(event={"type": "DELETED"}, namespace=NAMESPACE, name="a", memo=Memo(fleet))
    fleet.job("a")  # the same manifest applied again: another uid
    anew = fleet.kube.objects[("generationjobs", NAMESPACE, "a")]
    assert anew["metadata"]["uid"] != earlier["metadata"]["uid"]
    await rounds(fleet, 2)
    assert fleet.status("a")["phase"] == "Succeeded"
    assert worker.submits == [run, run]  # attempt 1 of each job
    assert worker.runs[run].job_uid == anew["metadata"]["uid"]  # a run of its own


@in_loop
async def test_a_deleted_jobs_key_leaves_the_pools_demand_record(fleet):
    """The pool counts each job's demand once (the placer's mix): the keys it has counted go
    with their jobs, or a long-lived pool would hold every job name it ever saw."""
    fleet.pool(workers=0)
    for name in ("a", "b"):
        fleet.job(name)
    await rounds(fleet, 1)
    memory = fleet.op.pool(NAMESPACE, "sd")
    assert memory.observed == {f"{NAMESPACE}/a", f"{NAMESPACE}/b"}
    mix = memory.mix
    del fleet.kube.objects[("generationjobs", NAMESPACE, "a")]
    await handlers.job_event(event={"type": "DELETED"}, namespace=NAMESPACE, name="a", memo=Memo(fleet))
    await rounds(fleet, 1)
    assert memory.observed == {f"{NAMESPACE}/b"}
    assert memory.mix is mix  # b is not counted again


@in_loop
async def test_finished_jobs_are_held_without_their_parsed_form_until_needed(fleet):
    """A pool keeps its finished jobs until their TTL: held as their bodies only."""
    fleet.pool()
    fleet.job("done", ttlSecondsAfterFinished=3600)
    fleet.job("kept")
    await rounds(fleet, 3)
    cache, memory = fleet.op.cache, fleet.op.pool(NAMESPACE, "sd")
    for name in ("done", "kept"):
        assert fleet.status(name)["phase"] == "Succeeded"
        assert memory.decisions[f"{NAMESPACE}/{name}"].job is None
        assert (NAMESPACE, name) not in cache._parsed
    # A new version (here the user cancels it, a spec change) is parsed and decided again.
    body = fleet.kube.objects[("generationjobs", NAMESPACE, "done")]
    body["spec"]["cancel"] = True
    cache.remember_job(fleet.kube.store("generationjobs", body))
    from unittest import mock

    from gpufleet.controller import reconcile

    with mock.patch.object(reconcile, "job_step", wraps=reconcile.job_step) as step:
        await rounds(fleet, 1)
    assert [call.args[1].metadata["name"] for call in step.call_args_list] == ["done"]
    assert step.call_args_list[0].args[1].spec.cancel is True
    assert memory.decisions[f"{NAMESPACE}/done"].job is None  # still finished: compact again
    assert fleet.status("done")["phase"] == "Succeeded"  # a finished job is not cancelled


@in_loop
async def test_queued_jobs_are_held_without_their_parsed_form_but_the_head_of_the_queue(fleet):
    from unittest import mock

    from gpufleet.controller import reconcile

    fleet.pool(workers=0)
    for index in range(60):
        fleet.job(f"q{index:02d}")
    with mock.patch.object(reconcile, "PLACEMENT_WINDOW", 4):
        await rounds(fleet, 3)
        memory, cache = fleet.op.pool(NAMESPACE, "sd"), fleet.op.cache
        assert len(memory.decisions) == 60
        assert all(d.job is None and d.queued is not None for d in memory.decisions.values())
        parsed = {name for _, name in cache._parsed}
        assert {"q00", "q01", "q02", "q03"} <= parsed  # the head, offered to placement
        assert len(parsed) <= 4 + reconcile.POSITION_WRITES_PER_ROUND < 60
        # Workers come: the queue drains in order, each job parsed again when it is needed.
        [worker] = fleet.pool(workers=1, max_jobs_per_gpu=64)
        await rounds(fleet, 20)
    assert all(fleet.status(f"q{index:02d}")["phase"] == "Succeeded" for index in range(60))
    assert worker.submits == [protocol.run_id(f"{NAMESPACE}/q{index:02d}", 1) for index in range(60)]
