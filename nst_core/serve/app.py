"""The HTTP API of ``nst serve`` (FastAPI), versioned under /v1, over the job engine: the web process checks and
records requests, the engine's Dask workers run every optimisation.

    app = create_app(engine, settings)      # app.state.engine / .settings / .accepting (False: POST answers 503)

    POST   /v1/jobs                 multipart: file content, file(s) style, field spec (JSON) -> 202 + the job
    GET    /v1/jobs?status=&limit=&offset=   the caller's jobs, newest first
    GET    /v1/jobs/{id}            the job: status, progress, error, times, spec
    GET    /v1/jobs/{id}/events     Server-Sent Events: "progress" (id: evaluations), then one final "status"
    GET    /v1/jobs/{id}/preview    JPEG of the best image so far, <= 256 px
    GET    /v1/jobs/{id}/result     the PNG with its recipe (a cancelled job's: partial, NST-Partial: true); 409 before
    POST   /v1/jobs/{id}/cancel     202
    DELETE /v1/jobs/{id}            204 (a job not final is cancelled first)
    GET    /v1/health               version, workers, queue
    GET    /v1/openapi.json         this API's OpenAPI document
    GET    /  and  /page/{file}     the page (nst_core/serve/page/), no token needed for its files

Clients: with ``settings.clients`` every /v1 request needs ``Authorization: Bearer TOKEN`` and a client sees only
its own jobs (another's answers 404, as an unknown one does); without, everything belongs to ``settings.LOCAL``.
Errors are problem documents (``problems``).
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import mimetypes
import re
import threading
import time
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..jobs.engine import Engine
from ..jobs.store import STATUSES, JobRecord
from ..jobs.worker import png_preview
from ..outputs.recipe import nst_version
from ..schedule import plan
from ..spec.spec import from_json, resolve, to_dict, to_json
from . import problems, uploads
from .problems import Problem
from .settings import LOCAL, Settings

__all__ = ["create_app", "job_view", "PAGE", "BATCH"]

#: The folder of the page's files (serve-page's).
PAGE = Path(__file__).resolve().parent / "page"
#: The store's ``batch`` of the service's jobs (Idempotency-Keys are looked up in it).
BATCH = "nst-serve"
_ID = re.compile(r"[0-9a-f]{32}")
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_EVENT_POLL = 0.25  # seconds between two looks at the store of an events stream
_EVENT_EVERY = 1.5  # a progress event at least this often while a job runs (the issue asks for 2 s)
_RETRY_AFTER = "2"  # seconds: a client's next look at a job not finished


class ProgressModel(BaseModel):
    evaluations: int = Field(description="objective evaluations done, over all scales")
    budget: int = Field(description="evaluations the job will do in all")
    scale: int = Field(description="the scale running, 1-based (0: not started)")
    scales: int
    loss: float | None = Field(description="the best loss so far")


class JobModel(BaseModel):
    id: str = Field(description="32 hex digits (128 random bits)")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: ProgressModel
    error: str | None = Field(description="why it failed or how it was cancelled, one line")
    created: str = Field(description="RFC 3339, UTC")
    started: str | None
    finished: str | None
    attempts: int = Field(description="runs started (a worker that died mid-job makes another)")
    partial: bool = Field(description="the result is a cancelled job's best image so far")
    spec: dict = Field(description="the job's options, resolved (every default filled in)")
    links: dict[str, str]


class JobListModel(BaseModel):
    jobs: list[JobModel]
    limit: int
    offset: int
    next: str | None = Field(description="the next page's path, or null")


class HealthModel(BaseModel):
    status: Literal["ok", "stopping"]
    version: str
    workers: list[dict] = Field(description="address, nthreads, memory_limit_mb, resources of each Dask worker")
    queue: dict[str, int] = Field(description="jobs queued and running, all clients")


# ------------------------------------------------------------------------------------------------- views


def _time(seconds):
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public_spec(spec_json: str) -> dict:
    """The job's resolved options, as POST /v1/jobs takes them (no format, version or paths)."""
    data = to_dict(from_json(spec_json, where="job"))
    return {k: v for k, v in data.items() if k not in ("format", "version", "content", "styles", "model")}


def job_view(rec: JobRecord) -> dict:
    """A job as the API shows it (times in RFC 3339, UTC)."""
    return {"id": rec.id, "status": rec.status, "progress": rec.progress, "error": rec.error,
            "created": _time(rec.created), "started": _time(rec.started), "finished": _time(rec.finished),
            "attempts": rec.attempts, "partial": bool(rec.partial), "spec": public_spec(rec.spec),
            "links": {"self": f"/v1/jobs/{rec.id}", "events": f"/v1/jobs/{rec.id}/events",
                      "preview": f"/v1/jobs/{rec.id}/preview", "result": f"/v1/jobs/{rec.id}/result",
                      "cancel": f"/v1/jobs/{rec.id}/cancel"}}


# ------------------------------------------------------------------------------------------------- clients


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def client(request: Request) -> str:
    """The caller's client name (a dependency of every /v1 route): ``LOCAL`` without tokens, else the name of the
    bearer token's line; Problem 401 without a valid one. Tokens are compared by their SHA-256 (no timing tells
    how much of a guess was right)."""
    known = request.app.state.token_digests
    if known is None:
        return LOCAL
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "this server needs a token: send 'Authorization: Bearer TOKEN'",
                      {"WWW-Authenticate": 'Bearer realm="nst"'})
    name = known.get(_token_digest(token.strip()))
    if name is None:
        raise Problem(401, "the bearer token is not one this server knows",
                      {"WWW-Authenticate": 'Bearer realm="nst", error="invalid_token"'})
    return name


def _own_job(request: Request, job_id: str, owner: str) -> JobRecord:
    """The caller's job ``job_id``; Problem 404 for an unknown id and for another client's job alike."""
    rec = request.app.state.engine.status(job_id) if _ID.fullmatch(job_id) else None
    if rec is None or rec.owner != owner:
        raise Problem(404, f"no job {job_id[:64]!r} (unknown, deleted, or not yours)")
    return rec


# ------------------------------------------------------------------------------------------------- submission


def _queue_check(engine: Engine, settings: Settings, owner: str) -> None:
    counts = engine.store.counts(owner=owner)
    active = counts["queued"] + counts["running"]
    if active >= settings.queue_limit:
        raise Problem(429, f"you have {active} jobs queued or running, the most this server takes from one client "
                           f"({settings.queue_limit}); wait for one to finish", {"Retry-After": "10"})


def _replay(engine: Engine, owner: str, key: str | None, job, inputs) -> JobRecord | None:
    """The job an earlier POST with the same Idempotency-Key made (None: none); Problem 422 when that POST sent
    other images or options."""
    if key is None:
        return None
    rec = engine.store.find(BATCH, key)
    if rec is None or rec.owner != owner:
        return None
    old, new = public_spec(rec.spec), public_spec(to_json(resolve(job)))
    if job.seed is None:  # a drawn seed differs from one POST to the next
        old["seed"] = new["seed"] = None
    if [i["sha256"] for i in rec.inputs] != [i.sha256 for i in inputs] or old != new:
        raise Problem(422, "this Idempotency-Key was used for another request (other images or options); "
                           "use a new key for a new job")
    return rec


def _submit(request: Request, owner: str, form: dict, idempotency: str | None) -> tuple[JobRecord, bool]:
    """(the job, True if it is an earlier POST's) of a parsed form: checks, then the engine. In a worker
    thread."""
    app = request.app
    engine, settings = app.state.engine, app.state.settings
    job = uploads.parse_spec(form["spec"])
    budget = sum(b for _, b in plan(resolve(job)))
    if settings.budget_limit is not None and budget > settings.budget_limit:
        raise Problem(400, f"spec: {budget} evaluations in all, over this server's limit of {settings.budget_limit} "
                           f"per job; ask for fewer iterations")
    inputs = uploads.check_inputs(job, form, settings.pixel_limit)
    key = hashlib.sha256(f"{owner}\0{idempotency}".encode()).hexdigest() if idempotency else None
    with app.state.submit_lock:  # one at a time: the queue count and the key lookup stay true until submitted
        rec = _replay(engine, owner, key, job, inputs)
        if rec is not None:
            return rec, True
        _queue_check(engine, settings, owner)
        resolved = resolve(job)
        refused = engine.refusal(resolved, inputs)
        if refused:
            raise Problem(422, refused)
        job_id = engine.submit(resolved, inputs, owner=owner, key=key, batch=BATCH)
    return engine.status(job_id), False


def _accepted(rec: JobRecord, replayed: bool) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{rec.id}", "Retry-After": _RETRY_AFTER}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job_view(rec), status_code=202, headers=headers)


# ------------------------------------------------------------------------------------------------- events


def _event(name: str, rec: JobRecord) -> str:
    return f"event: {name}\nid: {rec.evaluations}\ndata: {json.dumps(job_view(rec))}\n\n"


async def _event_stream(request: Request, job_id: str, last: int):
    """SSE text: a progress event whenever the evaluations pass ``last`` (-1: a new stream, which starts with the
    job as it is; a count below ``last`` is a run started again, which resets it) and at least every ``_EVENT_EVERY`` s while the job is queued or running, then one status event
    when it is final. Ends early when the job is deleted, or is queued while the server stops (a drain); the
    client reconnects with Last-Event-ID (to the next server). Streams still open when uvicorn stops are cut by it."""
    engine = request.app.state.engine
    sent_at = time.monotonic() if last >= 0 else 0.0  # a new stream starts with the state now, a resumed one not
    yield "retry: 2000\n\n"
    while True:
        rec = await run_in_threadpool(engine.status, job_id)
        if rec is None or (rec.status == "queued" and not request.app.state.accepting):
            return  # deleted; or the server is stopping and the job waits for the next start
        if rec.final:
            yield _event("status", rec)
            return
        now = time.monotonic()
        if rec.evaluations < last:  # the job runs again from its start (a checkpoint, a lost worker): count anew
            last = -1
        if rec.evaluations > last or now - sent_at >= _EVENT_EVERY:
            yield _event("progress", rec)
            last, sent_at = max(last, rec.evaluations), now
        await asyncio.sleep(_EVENT_POLL)


# ------------------------------------------------------------------------------------------------- images


def _preview(app, rec: JobRecord) -> bytes | None:
    """A final job's preview is made from its result (once, kept); a running one's is the workers' latest."""
    engine = app.state.engine
    if rec.final and rec.result_sha256:
        cache = app.state.previews
        found = cache.get(rec.result_sha256)
        if found is None:
            png = engine.result(rec.id)
            found = png_preview(png) if png else None
            if found is not None:
                if len(cache) > 64:
                    cache.clear()
                cache[rec.result_sha256] = found
        return found
    return engine.preview(rec.id)


# ------------------------------------------------------------------------------------------------- the app


def _page_files() -> dict:
    """{name: path} of the page's files (a name the client sends is looked up here, never joined to a path)."""
    if not PAGE.is_dir():
        return {}
    return {p.name: p for p in PAGE.iterdir() if p.is_file() and not p.name.startswith(".")}


#: The page's Content-Security-Policy: the browser itself refuses anything not from this server (scripts, styles,
#: requests), images may also be the page's own blob: / data: URLs (the chosen files, the previews).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _file_response(path: Path) -> FileResponse:
    kind = "text/javascript" if path.suffix == ".mjs" else (mimetypes.guess_type(path.name)[0] or
                                                             "application/octet-stream")
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache",
                                                        "Content-Security-Policy": PAGE_CSP})


class _NoSniff:
    """ASGI middleware: every answer says ``X-Content-Type-Options: nosniff`` (a browser must not guess that an
    uploaded picture or a JSON body is a page) and ``Referrer-Policy: no-referrer``."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", ())) + self.HEADERS
            await send(message)

        await self.app(scope, receive, sending)


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """The service over ``engine`` (see the module docstring)."""
    app = FastAPI(title="nst serve", version=nst_version(), openapi_url=None, docs_url=None,
                  redoc_url=None, description="Neural style transfer jobs on ONNX Runtime workers. Errors are RFC "
                                              "9457 problem documents (application/problem+json).")
    app.state.engine, app.state.settings, app.state.accepting = engine, settings, True
    app.state.token_digests = None if settings.clients is None else {
        _token_digest(t): name for t, name in settings.clients.items()}
    app.state.submit_lock, app.state.previews = threading.Lock(), {}
    problems.install(app)
    app.add_middleware(_NoSniff)
    for add in (_submission_routes, _job_routes, _image_routes, _service_routes, _page_routes):
        add(app)
    return app


_AUTH = (401,)
_IMAGE = {"png": {200: {"content": {"image/png": {}}, "description": "The picture, with its recipe in PNG text"}},
          "jpeg": {200: {"content": {"image/jpeg": {}}, "description": "A JPEG, at most 256 px on its longer side"}},
          "sse": {200: {"content": {"text/event-stream": {}},
                        "description": "event: progress | status, id: evaluations, data: a Job (JSON)"}}}


def _submission_routes(app: FastAPI) -> None:
    @app.post("/v1/jobs", status_code=202, response_model=JobModel, summary="Submit a job",
              responses=problems.responses(400, 401, 413, 422, 429, 503),
              openapi_extra={"requestBody": uploads.OPENAPI_BODY, "parameters": [{
                  "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                  "description": "a retried POST with the same key (and the same request) returns the same job"}]},
              description="202 with the job, Location: /v1/jobs/{id} and Retry-After. Images: JPEG, PNG or "
                          "WebP; the body and each image's pixels (from its header) are limited.")
    async def create_job(request: Request, owner: str = Depends(client)):
        settings = app.state.settings
        if not app.state.accepting:
            raise Problem(503, "the server is stopping and takes no new jobs; try again shortly",
                          {"Retry-After": "10"})
        idempotency = request.headers.get("idempotency-key")
        if idempotency is not None and not _KEY.fullmatch(idempotency):
            raise Problem(400, "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
        if idempotency is None:  # a retry of an earlier POST is answered even at the limit
            await run_in_threadpool(_queue_check, app.state.engine, settings, owner)
        form = await uploads.read_form(request, settings.body_limit)
        rec, replayed = await run_in_threadpool(_submit, request, owner, form, idempotency)
        return _accepted(rec, replayed)

    @app.get("/v1/jobs", response_model=JobListModel, summary="The caller's jobs, newest first",
             responses=problems.responses(400, 401, 422),
             description="Paginated: 'next' (and a Link header, rel=next) is the following page, null on the last.")
    def list_jobs(owner: str = Depends(client),
                  status: list[str] | None = Query(None, description="queued, running, succeeded, failed, "
                                                                     "cancelled (repeat or comma-separate)"),
                  limit: int = Query(20, ge=1, le=100), offset: int = Query(0, ge=0)):
        wanted = [s for value in status or () for s in value.split(",") if s]
        bad = [s for s in wanted if s not in STATUSES]
        if bad:
            raise Problem(400, f"status {bad[0]!r} is not one of {', '.join(STATUSES)}")
        rows = app.state.engine.jobs(status=tuple(wanted) or None, owner=owner, limit=limit + 1, offset=offset)
        following = None
        if len(rows) > limit:
            query = "".join(f"status={s}&" for s in wanted)
            following = f"/v1/jobs?{query}limit={limit}&offset={offset + limit}"
        headers = {"Link": f'<{following}>; rel="next"'} if following else {}
        return JSONResponse({"jobs": [job_view(r) for r in rows[:limit]], "limit": limit, "offset": offset,
                             "next": following}, headers=headers)


def _job_routes(app: FastAPI) -> None:
    @app.get("/v1/jobs/{job_id}", response_model=JobModel, summary="One job", responses=problems.responses(401, 404))
    def get_job(request: Request, job_id: str, owner: str = Depends(client)):
        rec = _own_job(request, job_id, owner)
        return JSONResponse(job_view(rec), headers={} if rec.final else {"Retry-After": _RETRY_AFTER})

    @app.get("/v1/jobs/{job_id}/events", summary="Server-Sent Events of a job", response_class=StreamingResponse,
             responses={**_IMAGE["sse"], **problems.responses(401, 404)},
             description="A progress event at least every 2 s while the job is queued or running, then one status "
                         "event when it is final. Send Last-Event-ID to resume: progress events then start above "
                         "that evaluation count.")
    def job_events(request: Request, job_id: str, owner: str = Depends(client)):
        _own_job(request, job_id, owner)
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else -1
        return StreamingResponse(_event_stream(request, job_id, start), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobModel, summary="Cancel a job",
              responses=problems.responses(401, 404, 409),
              description="A queued job ends at once; a running one after its current evaluation, its best image "
                          "becoming a partial result. 409 for a job that succeeded or failed.")
    def cancel_job(request: Request, job_id: str, owner: str = Depends(client)):
        rec = _own_job(request, job_id, owner)
        if rec.final and rec.status != "cancelled":
            raise Problem(409, f"job {job_id} is already {rec.status}")
        app.state.engine.cancel(job_id)
        return JSONResponse(job_view(app.state.engine.status(job_id) or rec), status_code=202)

    @app.delete("/v1/jobs/{job_id}", status_code=204, summary="Delete a job and its result",
                responses=problems.responses(401, 404), description="A job not final is cancelled first.")
    def delete_job(request: Request, job_id: str, owner: str = Depends(client)):
        _own_job(request, job_id, owner)
        app.state.engine.delete(job_id)
        return Response(status_code=204)


def _image_routes(app: FastAPI) -> None:
    @app.get("/v1/jobs/{job_id}/preview", summary="JPEG of the best image so far", response_class=Response,
             responses={**_IMAGE["jpeg"], **problems.responses(401, 404, 409)},
             description="Renewed about every 2 s while the job runs (ETag / If-None-Match: 304 when unchanged); "
                         "409 with Retry-After before the first one.")
    def job_preview(request: Request, job_id: str, owner: str = Depends(client)):
        rec = _own_job(request, job_id, owner)
        jpeg = _preview(app, rec)
        if jpeg is None:
            raise Problem(409, f"job {job_id} has no preview yet ({rec.status})", {"Retry-After": _RETRY_AFTER})
        tag = '"' + hashlib.sha256(jpeg).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"ETag": tag})
        return Response(jpeg, media_type="image/jpeg", headers={"ETag": tag, "Cache-Control": "no-cache"})

    @app.get("/v1/jobs/{job_id}/result", summary="The result PNG (with its recipe)", response_class=Response,
             responses={**_IMAGE["png"], **problems.responses(401, 404, 409)},
             description="A cancelled job's best image so far, with NST-Partial: true (else false). 409 with "
                         "Retry-After while the job is not finished, and for a job that ended without a picture.")
    def job_result(request: Request, job_id: str, owner: str = Depends(client)):
        rec = _own_job(request, job_id, owner)
        if not rec.final:
            raise Problem(409, f"job {job_id} is {rec.status}; its result comes when it is finished",
                          {"Retry-After": _RETRY_AFTER})
        png = app.state.engine.result(job_id)
        if png is None:
            raise Problem(409, f"job {job_id} is {rec.status} without a picture ({rec.error or rec.status})")
        headers = {"Content-Disposition": f'attachment; filename="nst-{job_id}.png"',
                   "NST-Partial": "true" if rec.partial else "false", "NST-Evaluations": str(rec.evaluations)}
        return Response(png, media_type="image/png", headers=headers)


def _service_routes(app: FastAPI) -> None:
    @app.get("/v1/openapi.json", include_in_schema=False)
    def openapi(owner: str = Depends(client)):  # behind the token like every /v1 route (FastAPI's own is not)
        return JSONResponse(app.openapi())

    @app.get("/v1/health", response_model=HealthModel, summary="Version, workers and queue",
             responses=problems.responses(401, 503), description="503 (same body) while the server is stopping.")
    def health(owner: str = Depends(client)):
        engine = app.state.engine
        counts = engine.store.counts()
        body = {"status": "ok" if app.state.accepting else "stopping", "version": nst_version(),
                "workers": engine.workers(), "queue": {"queued": counts["queued"], "running": counts["running"]}}
        return JSONResponse(body, status_code=200 if app.state.accepting else 503)


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page():
        found = _page_files().get("index.html")
        if found is None:
            raise Problem(404, "the page is not installed (nst_core/serve/page/index.html)")
        return _file_response(found)

    @app.get("/page/{name}", include_in_schema=False)
    def page_file(name: str):
        found = _page_files().get(name)
        if found is None:
            raise Problem(404, f"no page file {name[:64]!r}")
        return _file_response(found)
