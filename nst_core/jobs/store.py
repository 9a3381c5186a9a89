"""The job store: one row per job (status, attempts, progress, error, result PNG) in SQLite or PostgreSQL.

    store = open_store("out/nst-jobs.sqlite")              # a file path: SQLite in WAL mode
    store = open_store("postgresql://user@host:5432/db")   # PostgreSQL (psycopg 3)
    job_id = store.add(spec_json, inputs, key=..., batch=..., line=3, output="a.png", budget=200, scales=1)
    store.update(job_id, status="running", attempts=1, started=time.time())
    record = store.get(job_id); record.status, record.progress
    png = store.result(job_id); jpeg = store.preview(job_id); store.delete(job_id)
    store.expire(before=time.time() - 7 * 86400); store.drop_unused_blobs()     # retention

Statuses: queued, running, succeeded, failed, cancelled (the last three are final). Times are UNIX seconds
(float, UTC). ``inputs``: ``[{"role": "content" | "style", "path": str, "sha256": hex}, ...]``; their bytes may
be kept in the ``blobs`` table (``put_blob``, by SHA-256) so that a job can be run again from the store alone.
The store is written by the engine's process only (workers report through the scheduler), so SQLite's one writer
at a time is no limit, and a worker needs no database access.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import threading
import time

import sqlalchemy as sa

from ..errors import NSTError
from ..inputs.images import one_line

__all__ = ["STATUSES", "FINAL", "JobRecord", "Store", "open_store", "new_id", "store_url"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")

_META = sa.MetaData()
JOBS = sa.Table(
    "nst_jobs", _META,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(64), nullable=True),
    sa.Column("batch", sa.Text, nullable=True),
    sa.Column("line", sa.Integer, nullable=True),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("evaluations", sa.Integer, nullable=False, default=0),
    sa.Column("budget", sa.Integer, nullable=False, default=0),
    sa.Column("scale", sa.Integer, nullable=False, default=0),
    sa.Column("scales", sa.Integer, nullable=False, default=1),
    sa.Column("loss", sa.Float, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("worker", sa.Text, nullable=True),
    sa.Column("memory_mb", sa.Float, nullable=True),
    sa.Column("cancel", sa.Boolean, nullable=False, default=False),
    sa.Column("partial", sa.Boolean, nullable=False, default=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float, nullable=True),
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("updated", sa.Float, nullable=True),
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("result_sha256", sa.String(64), nullable=True),
    sa.Column("output_sha256", sa.String(64), nullable=True),
    sa.Column("result", sa.LargeBinary, nullable=True),
    sa.Column("preview", sa.LargeBinary, nullable=True),
    sa.Index("nst_jobs_batch_key", "batch", "key"),
    sa.Index("nst_jobs_owner_status", "owner", "status"),
)
BLOBS = sa.Table(
    "nst_blobs", _META,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
_FIELDS = tuple(c.name for c in JOBS.columns if c.name not in ("result", "preview"))


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """One job's row without its result and preview bytes (``Store.result``, ``Store.preview``); ``inputs`` decoded
    from JSON."""

    id: str
    key: str | None
    batch: str | None
    line: int | None
    output: str | None
    owner: str | None
    spec: str
    inputs: list
    status: str
    attempts: int
    evaluations: int
    budget: int
    scale: int
    scales: int
    loss: float | None
    error: str | None
    worker: str | None
    memory_mb: float | None
    cancel: bool
    partial: bool
    created: float
    started: float | None
    finished: float | None
    updated: float | None
    seconds: float | None
    result_sha256: str | None
    output_sha256: str | None

    @property
    def progress(self) -> dict:
        """``{"evaluations", "budget", "scale", "scales", "loss"}`` (the service's progress object)."""
        return {"evaluations": self.evaluations, "budget": self.budget, "scale": self.scale, "scales": self.scales,
                "loss": self.loss}

    @property
    def final(self) -> bool:
        return self.status in FINAL


def new_id() -> str:
    """A random 128-bit job id, 32 hex digits."""
    return secrets.token_hex(16)


def store_url(where: str) -> str:
    """The SQLAlchemy URL of ``where``: a file path (SQLite), ``sqlite:///...``, or ``postgresql://...`` (driven
    by psycopg 3)."""
    if "://" not in where:
        return "sqlite:///" + os.path.abspath(where)
    for prefix in ("postgresql://", "postgres://"):
        if where.startswith(prefix):
            return "postgresql+psycopg://" + where[len(prefix):]
    return where


def _sqlite_pragmas(connection, _record):
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
    cursor.close()


def _finite(value):
    return None if value is None or not math.isfinite(value) else float(value)


class Store:
    """The jobs of one database (see the module docstring); safe to use from several threads."""

    def __init__(self, url: str):
        self.url = url
        kind = sa.engine.make_url(url).get_backend_name()
        if kind == "sqlite":
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._lock = threading.Lock() if kind == "sqlite" else None
        try:
            _META.create_all(self.engine)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            _META.create_all(self.engine)  # another process created them between the check and the CREATE

    def close(self) -> None:
        self.engine.dispose()

    def _write(self, statement):
        if self._lock is None:
            with self.engine.begin() as conn:
                return conn.execute(statement)
        with self._lock, self.engine.begin() as conn:  # one writer at a time in this process: no busy waits
            return conn.execute(statement)

    def add(self, spec: str, inputs: list, *, key=None, batch=None, line=None, output=None, owner=None,
            budget: int = 0, scales: int = 1, memory_mb=None, job_id=None) -> str:
        """A new queued job; returns its id (``job_id`` or a new random one)."""
        job_id = job_id or new_id()
        self._write(JOBS.insert().values(
            id=job_id, key=key, batch=batch, line=line, output=output, owner=owner, spec=spec,
            inputs=json.dumps(inputs), status="queued", attempts=0, evaluations=0, budget=budget, scale=0,
            scales=scales, memory_mb=memory_mb, cancel=False, partial=False, created=time.time()))
        return job_id

    def update(self, job_id: str, **fields) -> None:
        """Set columns of one job (``loss``: non-finite values become NULL); ``updated`` is set to now."""
        if "loss" in fields:
            fields["loss"] = _finite(fields["loss"])
        fields.setdefault("updated", time.time())
        self._write(JOBS.update().where(JOBS.c.id == job_id).values(**fields))

    def requeue(self, job_id: str, reset: bool) -> None:
        """Back to queued, for a rerun; ``reset``: forget attempts, progress, error and result too."""
        fields = dict(status="queued", cancel=False, error=None, finished=None)
        if reset:
            fields.update(attempts=0, evaluations=0, scale=0, loss=None, started=None, seconds=None, result=None,
                          result_sha256=None, output_sha256=None, partial=False, worker=None, preview=None,
                          created=time.time())
        self.update(job_id, **fields)

    def finish(self, job_id: str, status: str, *, png: bytes | None = None, **fields) -> None:
        """A final status, with the result PNG (or none) and whatever else is known (error, loss, seconds, ...)."""
        assert status in FINAL
        digest = hashlib.sha256(png).hexdigest() if png is not None else None
        self.update(job_id, status=status, result=png, result_sha256=digest, finished=time.time(), **fields)

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select(JOBS.c.id == job_id)
        return rows[0] if rows else None

    def find(self, batch: str, key: str) -> JobRecord | None:
        """The newest job of ``batch`` with ``key`` (a batch's row), or None."""
        rows = self._select(sa.and_(JOBS.c.batch == batch, JOBS.c.key == key), limit=1)
        return rows[0] if rows else None

    def jobs(self, *, status=None, owner=None, batch=None, limit: int | None = None, offset: int = 0) -> list:
        """Jobs newest first, filtered by status (one or a tuple), owner and batch."""
        where = []
        if status is not None:
            where.append(JOBS.c.status.in_((status,) if isinstance(status, str) else tuple(status)))
        if owner is not None:
            where.append(JOBS.c.owner == owner)
        if batch is not None:
            where.append(JOBS.c.batch == batch)
        return self._select(sa.and_(sa.true(), *where), limit=limit, offset=offset)

    def counts(self, *, batch=None, owner=None) -> dict:
        """{status: number of jobs} (every status present, 0 when none)."""
        query = sa.select(JOBS.c.status, sa.func.count()).group_by(JOBS.c.status)
        if batch is not None:
            query = query.where(JOBS.c.batch == batch)
        if owner is not None:
            query = query.where(JOBS.c.owner == owner)
        with self.engine.connect() as conn:
            found = dict(conn.execute(query).all())
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def result(self, job_id: str) -> bytes | None:
        """The job's result PNG (a cancelled job's: the best image so far), or None."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(JOBS.c.result).where(JOBS.c.id == job_id)).scalar()

    def preview(self, job_id: str) -> bytes | None:
        """A JPEG of the job's best image so far (at most 256 px), while it runs and after; or None."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(JOBS.c.preview).where(JOBS.c.id == job_id)).scalar()

    def delete(self, job_id: str) -> bool:
        """Forget a job (its inputs' blobs stay: other jobs may share them); False when there was none."""
        return self._write(JOBS.delete().where(JOBS.c.id == job_id)).rowcount > 0

    def expire(self, before: float) -> int:
        """Forget the final jobs that finished before ``before`` (UNIX seconds); how many."""
        gone = sa.and_(JOBS.c.status.in_(FINAL), JOBS.c.finished < before)
        return self._write(JOBS.delete().where(gone)).rowcount

    def drop_unused_blobs(self) -> int:
        """Forget the kept input bytes that no job names any more (after ``delete`` / ``expire``); how many. The
        names are read and the bytes deleted in one transaction that new jobs wait for (this process's lock on
        SQLite, a table lock on PostgreSQL), so that an ``add`` naming a blob cannot slip in between and lose it."""
        def sweep(conn):
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("LOCK TABLE nst_jobs IN SHARE ROW EXCLUSIVE MODE"))
            named = {i["sha256"] for (text,) in conn.execute(sa.select(JOBS.c.inputs)) for i in json.loads(text)}
            stored = {d for (d,) in conn.execute(sa.select(BLOBS.c.sha256))}
            unused = sorted(stored - named)
            for k in range(0, len(unused), 500):
                conn.execute(BLOBS.delete().where(BLOBS.c.sha256.in_(unused[k:k + 500])))
            return len(unused)

        if self._lock is None:
            with self.engine.begin() as conn:
                return sweep(conn)
        with self._lock, self.engine.begin() as conn:
            return sweep(conn)

    def put_blob(self, digest: str, data: bytes) -> None:
        """Keep an input's bytes under their SHA-256 (once)."""
        with self.engine.connect() as conn:
            if conn.execute(sa.select(BLOBS.c.sha256).where(BLOBS.c.sha256 == digest)).first():
                return
        try:
            self._write(BLOBS.insert().values(sha256=digest, data=data))
        except sa.exc.IntegrityError:  # another process kept it meanwhile
            pass

    def blob(self, digest: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(BLOBS.c.data).where(BLOBS.c.sha256 == digest)).scalar()

    def _select(self, where, limit=None, offset=0) -> list:
        query = sa.select(*[JOBS.c[f] for f in _FIELDS]).where(where).order_by(JOBS.c.created.desc(), JOBS.c.id)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [JobRecord(**{**row, "inputs": json.loads(row["inputs"])}) for row in rows]


def open_store(where: str) -> Store:
    """The store at ``where`` (a path or a URL; see ``store_url``), its tables created if missing. NSTError (one
    line) when it cannot be opened."""
    url = store_url(where)
    try:
        return Store(url)
    except (sa.exc.SQLAlchemyError, ImportError, ValueError, OSError) as exc:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True) if "://" in url else where
        raise NSTError(f"--store {shown}: cannot open the job store ({one_line(exc)[:300]})") from None
