import sqlite3

import pytest

from agentnas.bus import messages as m
from agentnas.store.log import MIGRATIONS, EventLog, LogError

S = m.Sender(agent="t")


def ev(payload, run="r1", **kw):
    return m.make_event(payload, run_id=run, sender=S, **kw)


def test_append_is_idempotent_by_message_id(tmp_path):
    with EventLog(tmp_path / "l.sqlite") as log:
        batch = [ev(m.AgentHeartbeat(role="x")) for _ in range(5)]
        assert log.append(batch) == 5
        assert log.append(batch[2:] + [ev(m.RunStarted())]) == 1
        assert log.count("r1") == 6
        assert [r.id for r in log.rows("r1")][:5] == [e.id for e in batch]


def test_events_round_trip_and_page_in_order(tmp_path):
    with EventLog(tmp_path / "l.sqlite") as log:
        sent = [ev(m.EvaluationProgress(eval_id="e", epoch=i, epochs=50, train_loss=1.0 / (i + 1))) for i in range(50)]
        log.append(sent[:25])
        log.append([ev(m.RunStarted(), run="other")])
        log.append(sent[25:])
        assert list(log.events("r1")) == sent
        page1 = log.rows("r1", limit=20)
        page2 = log.rows("r1", after_seq=page1[-1].seq, limit=20)
        assert [r.id for r in page1 + page2] == [e.id for e in sent[:40]]
        assert list(log.iter_rows("r1", page=7)) == log.rows("r1")
        assert [r.kind for r in log.rows("other")] == ["run.started"]


def test_runs_projection_tracks_status(tmp_path):
    with EventLog(tmp_path / "l.sqlite") as log:
        log.append([ev(m.RunRequested(task="addigits"))])
        log.append([ev(m.RunStarted()), ev(m.AgentHeartbeat(role="x"))])
        log.append([ev(m.RunRequested(task="t"), run="r2")])
        runs = {r.run_id: r for r in log.runs()}
        assert runs["r1"].status == "running" and runs["r1"].n_events == 3
        assert runs["r2"].status == "requested"
        log.append([ev(m.RunFailed(reason="x"))])
        assert {r.run_id: r.status for r in log.runs()}["r1"] == "failed"
        assert log.run_exists("r2") and not log.run_exists("r3")


def test_kind_filter(tmp_path):
    with EventLog(tmp_path / "l.sqlite") as log:
        log.append([ev(m.RunStarted()), ev(m.AgentHeartbeat(role="x")), ev(m.RunFailed(reason="y"))])
        assert [r.kind for r in log.rows("r1", kinds=["run.failed", "run.started"])] == ["run.started", "run.failed"]


def test_migrations_are_recorded_and_reopen_is_a_no_op(tmp_path):
    path = tmp_path / "l.sqlite"
    EventLog(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with EventLog(path) as log:
        log.append([ev(m.RunStarted())])
    with EventLog(path, readonly=True) as log:
        assert log.count() == 1


def test_log_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    EventLog(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(LogError, match="written by a newer agentnas"):
        EventLog(path)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    for readonly in (False, True):
        with pytest.raises(LogError, match="not an SQLite event log"):
            EventLog(path, readonly=readonly)
    assert path.read_bytes().startswith(b"this is not")  # nothing overwritten


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(LogError, match="not an agentnas event log"):
        EventLog(path)
    with pytest.raises(LogError, match="not an agentnas event log"):
        EventLog(path, readonly=True)


def test_readonly_missing_file(tmp_path):
    with pytest.raises(LogError, match="no event log"):
        EventLog(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_stored_payload_this_version_cannot_read_becomes_unknown(tmp_path):
    with EventLog(tmp_path / "l.sqlite") as log:
        log.append_rows([("x1", "r1", "run.failed", 1, 1.0, None, '{"agent":"t","instance":""}', '{"reason": 7}')])
        (env,) = list(log.events("r1"))
        assert isinstance(env.payload, m.UnknownPayload)


def test_newer_log_says_upgrade_on_both_open_paths(tmp_path):
    path = tmp_path / "l.sqlite"
    EventLog(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(LogError) as caught:
            EventLog(path, readonly=readonly)
        assert str(caught.value) == f"{path} was written by a newer agentnas (schema 999); upgrade agentnas to read it"
    assert path.read_bytes() == before
