"""The results database: where it is, opening it, and its versioned schema.

Where: `--results-db URL`, else `AMILAB_RESULTS_DB`, else `results.sqlite` in AMILAB_HOME.
A URL is `sqlite:////ABSOLUTE/PATH` or `sqlite:///RELATIVE` as SQLAlchemy writes them (or a
plain file path) or `postgresql://…` (libpq's
URI, e.g. `postgresql:///amilab?host=/run/postgresql` for a Unix socket). Any other scheme
is bad input (exit 2); a server that cannot be reached, or a database whose schema is newer
than this amilab knows, is an environment problem (exit 3). Either way nothing is written.

The schema is the project's own list of migrations, each a version number and its DDL; the
first use of a database applies those it lacks in one transaction, under a lock (SQLite's
write lock, PostgreSQL's advisory lock), so several CI jobs starting at once agree. SQL is
written once with `?` placeholders and a few dialect words (`{serial}`, `{real}`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from builder import paths
from builder.errors import BadInput, EnvironmentProblem

ENV = "AMILAB_RESULTS_DB"
SQLITE, POSTGRESQL = "sqlite", "postgresql"
SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}
_LOCK_KEY = 0x616D696C6162  # "amilab": the advisory lock migrations take on PostgreSQL

_DIALECT = {
    SQLITE: {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL"},
    POSTGRESQL: {"serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION"},
}

# (version, statements): append only; a released migration never changes
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE runs (
                id {serial},
                kind TEXT NOT NULL,               -- matrix | smoke | bisect | import
                matrix_key TEXT NOT NULL,         -- the same cells, the same key
                name TEXT NOT NULL,               -- the matrix file, or what ran
                started TEXT NOT NULL,            -- ISO 8601 UTC, sortable as text
                ended TEXT NOT NULL,
                host TEXT NOT NULL,
                home TEXT NOT NULL,
                workers TEXT NOT NULL,            -- JSON: the Dask workers that ran cells
                accelerator TEXT NOT NULL,
                jobs INTEGER NOT NULL,
                seconds {real} NOT NULL,
                interrupted INTEGER NOT NULL,
                options TEXT NOT NULL,            -- JSON: how it was run (retries, …)
                reports TEXT NOT NULL,            -- JSON: where its JSON/JUnit/HTML went
                amilab_version TEXT NOT NULL
            )""",
            """CREATE TABLE cells (
                id {serial},
                run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                position INTEGER NOT NULL,        -- the matrix's own order
                cell_key TEXT NOT NULL,           -- row × kernel, as the user named them
                row_label TEXT NOT NULL,
                image TEXT NOT NULL,              -- as the user named it
                image_id TEXT NOT NULL,
                image_name TEXT NOT NULL,
                kernel TEXT NOT NULL,             -- the column's label
                kernel_id TEXT NOT NULL,
                kernel_name TEXT NOT NULL,
                kernel_release TEXT NOT NULL,     -- the exact version that booted
                options TEXT NOT NULL,            -- JSON
                status TEXT NOT NULL,
                class TEXT NOT NULL,
                evidence TEXT NOT NULL,           -- JSON: [{Line, Text}]
                known_issue TEXT NOT NULL,
                flaky INTEGER NOT NULL,           -- passed on a retry
                attempts TEXT NOT NULL,           -- JSON: each attempt's status, class, log
                seconds {real} NOT NULL,
                seconds_to_ssh {real},
                cpu_seconds {real},               -- QEMU's CPU seconds to SSH
                phases TEXT NOT NULL,             -- JSON: boot phases
                checks TEXT NOT NULL,             -- JSON: the smoke checks
                modules TEXT NOT NULL,            -- JSON: the static module verdicts, if any
                console_log TEXT NOT NULL,
                instance_id TEXT NOT NULL,
                worker TEXT NOT NULL              -- JSON: {Address, Host, Accelerator}
            )""",
            "CREATE INDEX cells_run ON cells (run_id, position)",
            "CREATE INDEX cells_key ON cells (cell_key, run_id)",
            "CREATE INDEX cells_image ON cells (image, kernel)",
            "CREATE INDEX runs_matrix ON runs (matrix_key, started)",
            "CREATE INDEX runs_started ON runs (started, id)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def default_url() -> str:
    return f"sqlite:///{paths.amilab_home() / 'results.sqlite'}"


def resolve(url: str | None) -> str:
    return url or os.environ.get(ENV) or default_url()


def scheme_of(url: str) -> str:
    """The dialect of a URL; a plain path is an SQLite file."""
    if "://" not in url and not url.startswith(("sqlite:", "postgresql:", "postgres:")):
        return SQLITE
    scheme = url.split(":", 1)[0].lower()
    if scheme not in SCHEMES:
        known = ", ".join(sorted(SCHEMES))
        raise BadInput(f"results database {_safe(url)}: unknown scheme {scheme!r}; use {known}")
    return SCHEMES[scheme]


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def sqlite_path(url: str) -> Path:
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        # SQLAlchemy's form: sqlite:///relative.sqlite, sqlite:////absolute/path.sqlite
        rest = rest[3:] if rest.startswith("///") else rest[2:] if rest.startswith("//") else rest
        return Path(rest)
    return Path(url)


class Database:
    """One connection, with the dialect's placeholders and words filled in. Both dialects
    run in autocommit mode: a write is one `transaction()`, a read sees what is committed."""

    def __init__(self, url: str, conn: Any, dialect: str) -> None:
        self.url = url
        self.conn = conn
        self.dialect = dialect

    def sql(self, text: str) -> str:
        for word, meaning in _DIALECT[self.dialect].items():
            text = text.replace("{" + word + "}", meaning)
        return text.replace("?", "%s") if self.dialect == POSTGRESQL else text

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self.sql(text), tuple(params))
        return cur

    def executemany(self, text: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            self.conn.cursor().executemany(self.sql(text), rows)

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.execute(text, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One write transaction: committed whole, or rolled back whole."""
        if self.dialect == POSTGRESQL:
            with self.conn.transaction():
                yield self
            return
        self.conn.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write
        try:
            yield self
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    @property
    def where(self) -> str:
        return _safe(self.url)


def connect(url: str | None = None, create: bool = True) -> Database:
    """Open the results database and bring its schema up to date (`create`: also make an
    SQLite file that does not exist yet)."""
    url = resolve(url)
    dialect = scheme_of(url)
    db = _connect_postgresql(url) if dialect == POSTGRESQL else _connect_sqlite(url, create)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _connect_sqlite(url: str, create: bool) -> Database:
    path = sqlite_path(url)
    if not create and not path.exists():
        raise BadInput(f"results database {path}: no such file")
    if not path.parent.is_dir():
        if path.parent != paths.amilab_home():
            raise BadInput(f"results database {path}: no directory {path.parent}")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # check_same_thread off: the dashboard shares one connection under its lock
        conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for a recording run
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as e:
        raise BadInput(f"results database {path}: {e}") from None
    # autocommit mode (isolation_level None): the only transactions are the explicit ones
    return Database(f"sqlite:///{path}", conn, SQLITE)


def _connect_postgresql(url: str) -> Database:
    try:
        import psycopg
    except ImportError:
        raise EnvironmentProblem(
            "a postgresql:// results database needs psycopg (pip install 'psycopg[binary]')"
        ) from None
    try:
        conn = psycopg.connect(url, connect_timeout=10, autocommit=True)
    except psycopg.ProgrammingError as e:  # a URL libpq cannot parse
        msg = str(e).strip().splitlines()[0]
        raise BadInput(f"results database {_safe(url)}: {msg}") from None
    except psycopg.OperationalError as e:
        lines = str(e).strip().splitlines()
        msg = next((x for x in lines if x.strip()), "cannot connect")
        # libpq's words, e.g. "connection to server on socket … failed: No such file …"
        raise EnvironmentProblem(
            f"results database {_safe(url)} cannot be reached: {msg.strip()}"
        ) from None
    return Database(url, conn, POSTGRESQL)


def _version(db: Database) -> int:
    got = db.rows("SELECT MAX(version) AS v FROM amilab_schema")
    return int(got[0]["v"] or 0) if got else 0


def _has_schema_table(db: Database) -> bool:
    if db.dialect == SQLITE:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'amilab_schema'"
    else:
        q = "SELECT 1 FROM information_schema.tables WHERE table_name = 'amilab_schema'"
    return bool(db.rows(q))


def migrate(db: Database) -> int:
    """Apply the migrations the database lacks; refuse one newer than this amilab (exit 3,
    nothing written). Returns the schema version."""
    if _has_schema_table(db):
        have = _version(db)
        _check_not_newer(db, have)
        if have == SCHEMA_VERSION:
            return have
    try:
        with db.transaction():
            if db.dialect == POSTGRESQL:
                db.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
            db.execute("CREATE TABLE IF NOT EXISTS amilab_schema (version INTEGER NOT NULL)")
            have = _version(db)  # again, under the lock: another process may have been first
            _check_not_newer(db, have)
            for version, statements in MIGRATIONS:
                if version <= have:
                    continue
                for s in statements:
                    db.execute(s)
                db.execute("INSERT INTO amilab_schema (version) VALUES (?)", (version,))
    except sqlite3.OperationalError as e:
        raise EnvironmentProblem(f"results database {db.where}: {e}") from None
    return SCHEMA_VERSION


def _check_not_newer(db: Database, have: int) -> None:
    if have > SCHEMA_VERSION:
        raise EnvironmentProblem(
            f"results database {db.where} has schema version {have}; this amilab knows up to "
            f"{SCHEMA_VERSION}: use a newer amilab"
        )
