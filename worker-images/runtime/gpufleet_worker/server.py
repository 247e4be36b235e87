"""The worker's HTTP API (FastAPI). Routes, bodies and events are defined in ``protocol``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from . import protocol as p
from .errors import Refusal
from .gate import RequestGate, refusal_response
from .protocol import ErrorResponse, Reason

if TYPE_CHECKING:
    from .runtime import Runtime

KEEPALIVE_SECONDS = 15.0
API_VERSION = "v1"
PUBLIC_PATHS = (p.HEALTHZ, p.READYZ)  # every other path needs the token


class EventHub:
    """Wakes event streams on the server's loop when a run thread appends an event."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def waiter(self, run_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[run_id].add(future)
        return future

    def discard(self, run_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[run_id]

    def notify(self, run_id: str) -> None:
        """Called from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, run_id)

    def _wake(self, run_id: str) -> None:
        for future in self._waiters.pop(run_id, set()):
            if not future.done():
                future.set_result(None)


def _field_path(location: tuple[Any, ...]) -> str:
    # ("body", "input", "width") -> "input.width"; query/path/header keep their kind.
    parts = [str(part) for part in location]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


bearer = HTTPBearer(auto_error=False, description="The pool's token: `Authorization: Bearer <token>`.")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def authorized_runtime(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Runtime:
    """The runtime, for a route behind the token. RequestGate has checked the token before
    the body was read; ``bearer`` declares the scheme in the API's schema."""
    return _runtime(request)


Authorized = Annotated["Runtime", Depends(authorized_runtime)]
RunId = Annotated[str, Path(pattern=p.RUN_ID_PATTERN, max_length=520, description="run_id(jobId, attempt)")]


def create_app(runtime: Runtime | None) -> FastAPI:
    """The API over ``runtime``. Without one, the app only serves its OpenAPI schema."""
    hub = EventHub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is None:
            yield
            return
        hub.bind(asyncio.get_running_loop())
        runtime.engine.on_event = hub.notify
        loader = threading.Thread(target=runtime.engine.preload_models, name="preload-models", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await asyncio.to_thread(runtime.engine.shutdown)

    app = FastAPI(
        title="gpufleet worker API",
        version=API_VERSION,
        description=(
            "The HTTP API of a gpufleet GPU worker. Every route except /healthz and /readyz "
            "needs the pool's bearer token."
        ),
        lifespan=lifespan,
        # The schema is published in docs/worker-api.md; served, it would be a route without a token.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    if runtime is not None:
        app.add_middleware(
            RequestGate,
            accepts=runtime.tokens.accepts,
            public_paths=PUBLIC_PATHS,
            max_body_bytes=runtime.config.max_request_bytes,
        )

    @app.exception_handler(Refusal)
    async def refusal(_request: Request, error: Refusal) -> JSONResponse:
        return refusal_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        messages = [f"{_field_path(e['loc'])}: {e['msg']}" for e in error.errors()]
        return refusal_response(Refusal(Reason.INVALID_REQUEST, "; ".join(messages)))

    @app.get(p.HEALTHZ, response_model=p.Health, tags=["health"])
    def healthz() -> p.Health:
        """Liveness: the process serves requests. No token needed."""
        return p.Health(status="ok")

    @app.get(p.READYZ, response_model=p.Health, responses={503: {"model": p.Health}}, tags=["health"])
    def readyz(request: Request) -> Response:
        """Readiness: every preload model is loaded (or has failed). No token needed."""
        problem = _runtime(request).engine.readiness_problem()
        body = p.Health(status="unavailable", message=problem) if problem else p.Health(status="ok")
        return JSONResponse(status_code=503 if problem else 200, content=body.model_dump(by_alias=True))

    @app.get(
        p.METRICS,
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **_errors(401)},
        tags=["metrics"],
    )
    def metrics(runtime: Authorized) -> Response:
        """Prometheus metrics: jobs by outcome, job seconds, VRAM gauges, model loads, load
        seconds, evictions, warm hits and resident models."""
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get(p.INVENTORY, response_model=p.Inventory, responses=_errors(401), tags=["worker"])
    def inventory(runtime: Authorized) -> p.Inventory:
        """GPUs (NVML, or the configured simulated GPU) with the models resident on each,
        every model's state and counters, and running jobs."""
        return runtime.engine.snapshot()

    @app.post(
        p.JOBS,
        response_model=p.JobStatus,
        status_code=201,
        responses={
            200: {"model": p.JobStatus, "description": "The run already existed; nothing new started."},
            **_errors(401, 409, 413, 422, 503),
        },
        tags=["jobs"],
    )
    def submit(request: p.SubmitRequest, runtime: Authorized, response: Response) -> p.JobStatus:
        """Admits and starts one attempt of a job, reserving its VRAM.

        Idempotent per (jobId, attempt): a repeat returns the existing run with 200. Where its
        model is not resident on the chosen GPU the run waits (phase Running, modelLoad.loading,
        progress stage LoadingModel) while it loads, idle models being evicted to make room.
        Refused with 409 InsufficientVRAM (asked and free bytes in the body) when no GPU can
        make room, and 422 ModelFailed when the model's source or load has failed.
        """
        status, created = runtime.engine.submit(request)
        response.status_code = 201 if created else 200
        return status

    @app.get(p.JOBS, response_model=p.JobList, responses=_errors(401), tags=["jobs"])
    def list_jobs(runtime: Authorized) -> p.JobList:
        """Every run this worker knows: running ones and the most recent finished ones."""
        return p.JobList(jobs=runtime.engine.runs())

    @app.get(p.JOB, response_model=p.JobStatus, responses=_errors(401, 404, 422), tags=["jobs"])
    def get_job(run_id: RunId, runtime: Authorized) -> p.JobStatus:
        """One run."""
        return runtime.engine.get(run_id)

    @app.post(p.JOB_CANCEL, response_model=p.JobStatus, responses=_errors(401, 404, 422), tags=["jobs"])
    def cancel_job(run_id: RunId, runtime: Authorized) -> p.JobStatus:
        """Asks a run to stop at its next step; its VRAM is freed when it has. Watch its
        events or poll it for phase Cancelled. Cancelling a finished run changes nothing."""
        return runtime.engine.cancel(run_id)

    @app.get(
        p.JOB_EVENTS,
        response_class=StreamingResponse,
        responses={
            200: {
                "description": (
                    "Server-sent events: `state`, `progress` ... and a final `result`, each "
                    "with `id:` (a sequence number) and `data:` a JobEvent."
                ),
                "content": {p.SSE_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/JobEvent"}}},
            },
            **_errors(401, 404, 422),
        },
        tags=["jobs"],
    )
    def job_events(
        run_id: RunId,
        runtime: Authorized,
        last_event_id: Annotated[
            int | None,
            Header(ge=0, le=10**9, description="Resume after this event id."),
        ] = None,
    ) -> StreamingResponse:
        """A run's progress stream: replays its events, follows it live, ends after `result`."""
        engine = runtime.engine
        engine.events_after(run_id, 0)  # 404 now, before the stream starts

        async def stream() -> AsyncIterator[str]:
            seen = last_event_id or 0
            while True:
                waiter = hub.waiter(run_id)  # before reading: no wake-up can slip between
                try:
                    events, complete = engine.events_after(run_id, seen)
                    for event in events:
                        seen += 1
                        data = event.model_dump_json(by_alias=True, exclude_none=True)
                        yield f"id: {seen}\nevent: {event.event.value}\ndata: {data}\n\n"
                    if complete:
                        return
                    if not events:
                        try:
                            await asyncio.wait_for(asyncio.shield(waiter), KEEPALIVE_SECONDS)
                        except TimeoutError:
                            yield ": keepalive\n\n"
                except Refusal:
                    return  # the run was forgotten while we streamed it
                finally:
                    hub.discard(run_id, waiter)

        return StreamingResponse(
            stream(),
            media_type=p.SSE_MEDIA_TYPE,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app


def openapi_schema() -> dict[str, Any]:
    return create_app(None).openapi()
