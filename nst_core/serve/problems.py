"""Errors as RFC 9457 problem documents (``application/problem+json``) carrying nst's one-line messages.

    raise Problem(422, "content: truncated or incomplete image file (...)")
    install(app)      # Problem, NSTError, FastAPI's own 404 / 405 / validation errors and any defect become problems

A document is ``{"type": "about:blank", "title": <the status's phrase>, "status": N, "detail": <one line>,
"instance": <the request's path>}``: the status says what kind of problem it is (RFC 9457 section 4.2.1's
"about:blank"), the detail which one. Statuses of the service:

    400  a request that is not the form asked for: a missing part, a spec that is not a JSON object, an unknown
         or invalid spec option (the spec is the client's to fix)
    401  no valid ``Authorization: Bearer TOKEN`` (with ``WWW-Authenticate: Bearer``)
    404  an unknown job, or another client's (the two look the same)
    409  a result or preview asked of a job that has none yet (``Retry-After``), a cancel of a final job
    413  a body over the limit
    422  an image that cannot be used (not JPEG / PNG / WebP, over the pixel limit, truncated, corrupt), a job
         that fits no worker's memory, an Idempotency-Key reused for another request
    429  the client has ``queue_limit`` jobs queued or running (``Retry-After``)
    503  the server is stopping (``Retry-After``)
"""
from __future__ import annotations

import http
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..errors import NSTError
from ..inputs.images import one_line

__all__ = ["Problem", "ProblemDocument", "problem_response", "install", "responses", "MEDIA_TYPE"]

MEDIA_TYPE = "application/problem+json"
_log = logging.getLogger("nst.serve")


class Problem(Exception):
    """An HTTP error answer: ``status``, a one-line ``detail``, extra ``headers``."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, one_line(detail), dict(headers or {})


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document (the OpenAPI schema of every error answer)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


def responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` of a route's problem answers."""
    return {s: {"model": ProblemDocument, "description": http.HTTPStatus(s).phrase,
                "content": {MEDIA_TYPE: {}}} for s in statuses}


def problem_response(status: int, detail: str, instance: str | None = None, headers: dict | None = None):
    body = {"type": "about:blank", "title": http.HTTPStatus(status).phrase, "status": status,
            "detail": one_line(detail)}
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _validation_detail(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header"))
    return f"{where or 'request'}: {first.get('msg', 'invalid')}"


def _openapi_problems(app: FastAPI) -> None:
    """``app.openapi`` without FastAPI's own 422 answers (HTTPValidationError): this app's are problems, and
    routes that can give one say so themselves."""
    made = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = made()
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                answer = operation.get("responses", {}).get("422")
                if answer and "HTTPValidationError" in str(answer):
                    del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi


def install(app: FastAPI) -> None:
    """Every error of ``app`` answered as a problem document (and so documented)."""
    _openapi_problems(app)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, request.url.path, exc.headers)

    @app.exception_handler(NSTError)
    async def _nst_error(request: Request, exc: NSTError):
        return problem_response(400, str(exc), request.url.path)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else http.HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and detail == "Not Found":  # no route
            detail = f"no such path {request.url.path[:200]!r} (the API is under /v1; /v1/openapi.json lists it)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path[:200]}"
        return problem_response(exc.status_code, detail, request.url.path, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return problem_response(422, _validation_detail(exc), request.url.path)

    @app.exception_handler(Exception)
    async def _defect(request: Request, exc: Exception):
        _log.exception("nst serve: %s %s failed", request.method, request.url.path)
        return problem_response(500, f"internal error ({type(exc).__name__}); the server's log has the details",
                                request.url.path)
