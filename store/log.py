"""The SQLite event log: the system of record.

One writer (the recorder) appends; everyone else reads. WAL mode lets readers run while
the recorder commits. A message id is unique, so a redelivered event is a no-op.
Schema changes are numbered migrations applied in order on open (PRAGMA user_version).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec
import sqlite_utils

from agentnas.bus import messages
from agentnas.store.state.run import STATUS_AFTER, RunState, replay, status_after


class LogError(RuntimeError):
    """The log file is missing, unreadable or not an agentnas log (one-line message)."""


# Each entry moves the schema from version i to i + 1. Never edit an applied entry: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        schema INTEGER NOT NULL,
        time REAL NOT NULL,
        causation_id TEXT,
        sender TEXT NOT NULL,
        payload TEXT NOT NULL,
        recorded_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    );
    CREATE INDEX events_run_seq ON events (run_id, seq);
    CREATE INDEX events_kind ON events (run_id, kind, seq);
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        n_events INTEGER NOT NULL,
        first_time REAL NOT NULL,
        last_time REAL NOT NULL,
        status TEXT NOT NULL DEFAULT ''
    );
    """,
    # when the recorder last purged the run's events from the EVENTS stream (retention)
    "ALTER TABLE runs ADD COLUMN purged_at REAL;",
)

DEFAULT_NAME = "events.sqlite"


class Row(msgspec.Struct, frozen=True):
    seq: int
    id: str
    run_id: str
    kind: str
    schema: int
    time: float
    causation_id: str | None
    sender: str  # JSON of messages.Sender
    payload: str  # JSON


class RunSummary(msgspec.Struct, frozen=True):
    run_id: str
    status: str
    n_events: int
    first_time: float
    last_time: float


_sender_decoder = msgspec.json.Decoder(messages.Sender)


def row_to_envelope(row: Row) -> messages.Envelope:
    """Decode a stored row; an unknown kind (or a payload this version cannot read)
    becomes UnknownPayload, never an error."""
    try:
        payload = messages.decode_payload(row.kind, row.payload)
    except messages.UndecodableMessage:
        payload = messages.UnknownPayload(kind=row.kind, raw=row.payload.encode())
    return messages.Envelope(
        id=row.id,
        run_id=row.run_id,
        kind=row.kind,
        time=row.time,
        sender=_sender_decoder.decode(row.sender),
        payload=payload,
        causation_id=row.causation_id,
        schema=row.schema,
    )


class EventLog:
    """Open (and migrate) the log at `path`; `readonly=True` never creates or migrates."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise LogError(f"no event log at {self.path}")
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 10000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LogError(f"{self.path} is not an SQLite event log ({exc})") from None
        except OSError as exc:
            raise LogError(f"cannot open event log {self.path}: {exc.strerror}") from None
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        if readonly:
            if version > len(MIGRATIONS):
                conn.close()
                raise self._newer(version)
            if version == 0:
                conn.close()
                raise LogError(f"{self.path} is not an agentnas event log (schema {version})")
        else:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        if version > len(MIGRATIONS):
            self.conn.close()
            raise self._newer(version)
        if version == 0 and self.db.table_names():
            raise LogError(f"{self.path} is an SQLite file but not an agentnas event log")
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes
            for number in range(version, len(MIGRATIONS)):
                self.conn.executescript(
                    f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;"
                )
        except sqlite3.DatabaseError as exc:
            raise LogError(f"cannot migrate {self.path}: {exc}") from None

    def _newer(self, version: int) -> LogError:
        # this version knows schemas up to len(MIGRATIONS); never touch a newer file
        return LogError(f"{self.path} was written by a newer agentnas (schema {version}); upgrade agentnas to read it")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing (the recorder only) ---------------------------------------------------

    def append(self, envelopes: Iterable[messages.Envelope]) -> int:
        """Insert a batch in one transaction; duplicates by id are ignored. Returns rows added."""
        rows = [_to_row(e) for e in envelopes]
        return self.append_rows(rows)

    def append_rows(self, rows: list[tuple]) -> int:
        """Rows as (id, run_id, kind, schema, time, causation_id, sender, payload)."""
        if not rows:
            return 0
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            last_seq = cur.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            before = self.conn.total_changes
            cur.executemany(
                "INSERT OR IGNORE INTO events"
                " (id, run_id, kind, schema, time, causation_id, sender, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = self.conn.total_changes - before
            if added:
                self._update_runs(cur, last_seq, {r[1] for r in rows if r[2] in STATUS_AFTER})
            cur.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back by itself (a full disk does that); a ROLLBACK then fails
            # with "no transaction is active" and would hide the real error
            if self.conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        return added

    def _update_runs(self, cur: sqlite3.Cursor, after_seq: int, lifecycle: set[str]) -> None:
        """Fold the rows this transaction added (seq > after_seq) into the runs projection."""
        cur.execute(
            "INSERT INTO runs (run_id, first_seq, last_seq, n_events, first_time, last_time)"
            " SELECT run_id, min(seq), max(seq), count(*), min(time), max(time)"
            " FROM events WHERE seq > ? GROUP BY run_id"
            " ON CONFLICT(run_id) DO UPDATE SET last_seq = excluded.last_seq,"
            " n_events = n_events + excluded.n_events, last_time = max(last_time, excluded.last_time)",
            (after_seq,),
        )
        kinds = tuple(STATUS_AFTER)
        for run_id in lifecycle:
            # the same rule as the run-state fold (store/state/run.py): lifecycle events in log order
            (status,) = cur.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            added = cur.execute(
                f"SELECT kind FROM events WHERE run_id = ? AND seq > ? AND kind IN ({', '.join('?' * len(kinds))})"
                " ORDER BY seq",
                (run_id, after_seq, *kinds),
            )
            for (kind,) in added:
                status = status_after(status, kind)
            cur.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    # --- reading -------------------------------------------------------------------------

    def runs_to_purge(self, ended_before: float) -> list[str]:
        """Ended runs whose last event is older than `ended_before` and that were not purged since."""
        cur = self.conn.execute(
            "SELECT run_id FROM runs WHERE status IN ('finished', 'failed') AND last_time < ?"
            " AND (purged_at IS NULL OR purged_at < last_time) ORDER BY last_seq", (ended_before,))
        return [r[0] for r in cur]

    def mark_purged(self, run_ids: list[str], when: float) -> None:
        with self.conn:
            self.conn.executemany("UPDATE runs SET purged_at = ? WHERE run_id = ?", [(when, r) for r in run_ids])

    def run_exists(self, run_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def runs(self) -> list[RunSummary]:
        cur = self.conn.execute(
            "SELECT run_id, status, n_events, first_time, last_time FROM runs ORDER BY first_seq"
        )
        return [RunSummary(*r) for r in cur]

    def rows(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[Row]:
        """One page of a run's events in log order, starting after `after_seq`."""
        sql = (
            "SELECT seq, id, run_id, kind, schema, time, causation_id, sender, payload"
            " FROM events WHERE run_id = ? AND seq > ?"
        )
        params: list = [run_id, after_seq]
        kinds = list(kinds or [])
        if kinds:
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += kinds
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [Row(*r) for r in self.conn.execute(sql, params)]

    def iter_rows(self, run_id: str, *, page: int = 5000, **filters) -> Iterator[Row]:
        after = 0
        while True:
            batch = self.rows(run_id, after_seq=after, limit=page, **filters)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].seq

    def events(self, run_id: str, **filters) -> Iterator[messages.Envelope]:
        for row in self.iter_rows(run_id, **filters):
            yield row_to_envelope(row)

    def run_state(self, run_id: str) -> RunState:
        """The run's state: its events folded (store/state)."""
        return replay(run_id, self.events(run_id))

    def count(self, run_id: str | None = None) -> int:
        if run_id is None:
            return self.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return self.conn.execute(
            "SELECT count(*) FROM events WHERE run_id = ?", (run_id,)
        ).fetchone()[0]


_sender_encoder = msgspec.json.Encoder()


def _to_row(e: messages.Envelope) -> tuple:
    payload = (
        e.payload.raw.decode()
        if isinstance(e.payload, messages.UnknownPayload)
        else messages.encode_payload(e.payload).decode()
    )
    return (
        e.id,
        e.run_id,
        e.kind,
        e.schema,
        e.time,
        e.causation_id,
        _sender_encoder.encode(e.sender).decode(),
        payload,
    )


def load_run_state(event_log: EventLog, run_id: str) -> RunState:
    return event_log.run_state(run_id)


def log_path(home: Path) -> Path:
    return Path(home) / DEFAULT_NAME
