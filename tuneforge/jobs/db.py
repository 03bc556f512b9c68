"""The job store's tables, its engine, and its schema migrations.

One SQLAlchemy schema serves the embedded default (SQLite in WAL mode, a file in the data
directory) and a shared PostgreSQL database for many workers (pass its URL). Tables:

- `organizations`: tenants; every other row belongs to one (API keys map to them).
- `files`: uploaded datasets and result files, stored on disk by id, never by client name.
- `jobs`: fine-tuning jobs: the request, the resolved settings, status, the worker's lease.
- `job_events`: the job's log (messages and per-step metrics), append-only.
- `job_checkpoints`: servable checkpoints of a job.
- `models`: fine-tuned models a successful job produced.
- `idempotency_keys`: (organization, key) -> the job a create request made.

Every table has an integer `seq` (monotonic insertion order) that cursor pagination sorts
on: `created_at` has one-second resolution and ties. The schema is versioned with Alembic
(`tuneforge/jobs/migrations`); `migrate(engine)` brings any database up to date and runs on
every start, under a lock so a server and a worker starting together do not race.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    pass


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT identities.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class File(Base):
    __tablename__ = "files"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The data pipeline's report at upload (format, counts, problems with line numbers).
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Relative to the data directory: files/<id>.
    path: Mapped[str] = mapped_column(String(256))


class Job(Base):
    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    # What the client asked for.
    model: Mapped[str] = mapped_column(String(512))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Resolved: the base model id (root of the lineage), what training starts from, and the
    # TrainConfig overrides (dotted keys) the worker runs with.
    base_model: Mapped[str] = mapped_column(String(512))
    base_path: Mapped[str] = mapped_column(Text)
    parent_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    train_overrides: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Outcome.
    fine_tuned_model: Mapped[str | None] = mapped_column(String(700), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Progress: the last step whose metrics became an event, and the run's length.
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Cooperative control: "cancel" or "pause" requested, acted on by the worker.
    control: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The lease of the worker running the job; an expired lease means the worker died.
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every state change: a compare-and-set guard for claims on any database.
    version: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_jobs_claim", "status", "seq"),)


class JobEvent(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(700), unique=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("job_id", "step"),)


class Model(Base):
    __tablename__ = "models"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(700), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(512))
    parent_model: Mapped[str | None] = mapped_column(String(700), nullable=True)
    path: Mapped[str] = mapped_column(Text)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)


def make_engine(url: str, *, writer: bool = True) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, and explicit transactions.

    pysqlite starts transactions lazily, so a read-then-write transaction can fail with
    "database is locked" when another writer commits in between. Transactions of a `writer`
    engine begin with BEGIN IMMEDIATE instead (SQLAlchemy's documented recipe): writers queue
    on the busy timeout. A reader engine begins plain (deferred) transactions, which WAL
    never blocks: listings and lookups do not wait for the worker's writes.
    """
    if not url.startswith("sqlite"):
        return create_engine(postgres_driver(url), pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def postgres_driver(url: str) -> str:
    """`postgresql://...` (and `postgres://...`) with the psycopg 3 driver named: SQLAlchemy
    would pick psycopg2 for a bare scheme, which TuneForge neither installs nor tests
    (`pip install 'tuneforge[postgres]'` installs psycopg 3). Other URLs pass unchanged."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url.removeprefix(bare)
    return url


@contextlib.contextmanager
def _migration_lock(engine: Engine, lock_file: Path | None) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(74061)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(74061)"))
                conn.commit()
        return
    if lock_file is None or sys.platform == "win32":  # Windows: no advisory file locks;
        yield  # start one process at a time
        return
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine, lock_file: Path | None = None) -> None:
    """Upgrade the database to the newest schema revision (a no-op when it is current)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic narrates every start at INFO ("Context impl SQLiteImpl."): not news to users.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with _migration_lock(engine, lock_file), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
