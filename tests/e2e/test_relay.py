"""outboxd run against real PostgreSQL + wal2json and a real Kafka broker."""
import json
import os
import signal
import subprocess
import tempfile
import threading
import time

import psycopg

from conftest import APP_DSN, BIN, BROKERS, RELAY_DSN, current_lsn, pg
from loadgen import LoadGen, verify

TYPES = ("athlete", "bout")


def test_concurrent_mixed_10k(harness):
    """10k events from 8 concurrent writers in transactions of 1..120 rows,
    with rollbacks and transactions that touch only other tables: every
    committed event arrives once, exact, in per-aggregate order."""
    gen = LoadGen(APP_DSN, harness.table, seed=11)
    p = harness.start()
    committed = gen.run(10_000, threads=8)
    harness.wait_confirmed(current_lsn())
    events = harness.consume(TYPES)
    summary = verify(committed, events, harness.slot, harness.table)
    assert summary["received"] == len(committed)
    assert p.stop() == 0
    assert "final confirmed flush LSN" in p.log()
    gen.drop()


def test_backlog_written_before_start(harness):
    """Events committed while outboxd was down are delivered when it starts."""
    harness.create_slot()
    gen = LoadGen(APP_DSN, harness.table, seed=22, aggregates=50)
    committed = gen.run(3_000, threads=4)
    target = current_lsn()
    p = harness.start()
    harness.wait_confirmed(target)
    verify(committed, harness.consume(TYPES), harness.slot, harness.table)
    assert p.stop() == 0
    gen.drop()


def test_sigterm_mid_stream_then_restart(harness):
    """SIGTERM while writers are busy: exit 0 after flushing; the restarted
    relay continues where it stopped: zero lost, zero duplicated."""
    gen = LoadGen(APP_DSN, harness.table, seed=33, aggregates=100)
    first = harness.start()
    writer = threading.Thread(target=gen.run, args=(8_000,), kwargs={"threads": 4})
    writer.start()
    while len(gen.committed) < 2_500:
        time.sleep(0.05)
    assert first.stop(signal.SIGTERM) == 0, first.log()
    assert "final confirmed flush LSN" in first.log()
    time.sleep(1.0)  # writes keep committing while no relay runs
    second = harness.start()
    writer.join()
    harness.wait_confirmed(current_lsn())
    events = harness.consume(TYPES)
    summary = verify(gen.committed, events, harness.slot, harness.table, exactly_once=True)
    assert summary["duplicates"] == 0
    assert second.stop() == 0
    gen.drop()


def _insert(conn, table, agg, payload_sql="'{}'::jsonb", topic=None):
    return conn.execute(
        f"INSERT INTO {table}(aggregatetype, aggregateid, type, payload, aggregate_version, topic)"
        f" VALUES ('athlete', %s, 'Updated', {payload_sql}, 1, %s) RETURNING id::text", (agg, topic)).fetchone()[0]


def test_broker_rejects_poison_row(harness):
    """A payload the broker refuses (over its message.max.bytes): outboxd
    exits 3, names the row, and does not confirm past it; a restart halts on
    the same row again instead of skipping it."""
    harness.create_slot()
    with pg() as c:
        with c.transaction():
            good = [_insert(c, harness.table, f"g{i}") for i in range(5)]
    before_poison = current_lsn()
    with pg() as c:
        with c.transaction():
            _insert(c, harness.table, "p0")
            # ~1.6 MB of random hex: lz4 cannot shrink it under the broker's 1 MB.
            bad = _insert(c, harness.table, "p1",
                          "jsonb_build_object('blob', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 50000)))")
    with pg() as c:
        with c.transaction():
            _insert(c, harness.table, "after")
    # Let the client accept it so the broker is the one that refuses.
    p = harness.start(wait=False, OUTBOXD_KAFKA_MESSAGE_MAX_BYTES=5_000_000)
    rc = p.proc.wait(120)
    p.reader.join(5)
    log = p.log()
    assert rc == 3, log
    assert bad in log and "MSG_SIZE_TOO_LARGE" in log and "poison_row" in log, log
    confirmed = harness.slot_confirmed()
    with pg(RELAY_DSN) as c:
        assert c.execute("SELECT %s::pg_lsn <= %s::pg_lsn", (confirmed, before_poison)).fetchone()[0], \
            (confirmed, before_poison)
    # The good transaction before the poison one was delivered and confirmed.
    events = harness.consume(["athlete"])
    ids = {e["event_id"] for e in events}
    assert set(good) <= ids
    # Halting is sticky: the same row stops the relay again, it is not skipped.
    again = harness.start(wait=False, OUTBOXD_KAFKA_MESSAGE_MAX_BYTES=5_000_000)
    assert again.proc.wait(120) == 3
    again.reader.join(5)
    assert bad in again.log()
    assert harness.slot_confirmed() == confirmed


def test_null_aggregate_id_is_poison(harness):
    """A NULL Kafka key cannot keep per-aggregate order: halt and name it."""
    harness.create_slot()
    with pg() as c:
        with c.transaction():
            ok = _insert(c, harness.table, "a1")
    with pg() as c:
        bad = c.execute(f"INSERT INTO {harness.table}(aggregatetype, type, payload) VALUES ('athlete', 'X', '{{}}')"
                        " RETURNING id::text").fetchone()[0]
    p = harness.start(wait=False)
    assert p.proc.wait(60) == 3
    p.reader.join(5)
    log = p.log()
    assert bad in log and "aggregateid" in log and "is NULL" in log, log
    assert ok in {e["event_id"] for e in harness.consume(["athlete"])}


def test_invalid_topic_is_poison(harness):
    harness.create_slot()
    with pg() as c:
        bad = _insert(c, harness.table, "a1", topic="not a topic!")
    p = harness.start(wait=False)
    assert p.proc.wait(60) == 3
    p.reader.join(5)
    assert bad in p.log() and "not a valid Kafka topic name" in p.log()


def test_topic_column_overrides_template_and_updates_deletes_are_ignored(harness):
    p = harness.start()
    custom = harness.prefix + ".custom"
    with pg() as c:
        with c.transaction():
            a = _insert(c, harness.table, "a1")
            b = _insert(c, harness.table, "a2", topic=custom)
            c.execute(f"UPDATE {harness.table} SET type = 'Changed' WHERE id = %s", (a,))
            # Producers may delete outbox rows right away: the INSERT is in the WAL.
            c.execute(f"DELETE FROM {harness.table} WHERE id = %s", (b,))
        c.execute(f"DELETE FROM {harness.table}")
    harness.wait_confirmed(current_lsn())
    events = harness.consume(["athlete", "custom"])
    got = {e["event_id"]: e for e in events}
    assert sorted(got) == sorted([a, b])
    assert got[a]["topic"] == harness.prefix + ".athlete" and got[a]["event_type"] == "Updated"
    assert got[b]["topic"] == custom
    assert p.stop() == 0


def _run_fail(env, args=("run",), timeout=30):
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    full.update(env)
    return subprocess.run([BIN, *args], env=full, capture_output=True, text=True, timeout=timeout)


def test_bad_config_and_server_state_get_clear_errors(harness):
    base = harness.env()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("pg.conninfo = x\nslot.nmae = typo\n")
    r = _run_fail({}, ("run", "--config", f.name))
    assert r.returncode == 2 and "slot.nmae" in r.stderr and ":2" in r.stderr, r.stderr
    os.unlink(f.name)

    r = _run_fail({k: v for k, v in base.items() if k != "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS"})
    assert r.returncode == 2 and "kafka.bootstrap.servers" in r.stderr, r.stderr

    r = _run_fail({**base, "OUTBOXD_KAFKA_NO_SUCH_PROPERTY": "1"})
    assert r.returncode == 2 and "kafka.no.such.property" in r.stderr, r.stderr

    r = _run_fail({**base, "OUTBOXD_OUTBOX_TABLE": "no_such_outbox"})
    assert r.returncode == 2 and "no_such_outbox does not exist" in r.stderr, r.stderr

    r = _run_fail({**base, "OUTBOXD_OUTBOX_COLUMN_AGGREGATEID": "agg_id"})
    assert r.returncode == 2 and 'no column "agg_id"' in r.stderr, r.stderr

    r = _run_fail({**base, "OUTBOXD_PG_CONNINFO": APP_DSN})  # role app has no REPLICATION
    assert r.returncode == 2 and "REPLICATION" in r.stderr and "ALTER ROLE" in r.stderr, r.stderr
    assert "password=app" not in r.stderr

    r = _run_fail({**base, "OUTBOXD_SLOT_CREATE": "false"})
    assert r.returncode == 4 and "does not exist" in r.stderr, r.stderr

    r = _run_fail(base, ("--print-config",))
    assert r.returncode == 0 and "password=[redacted]" in r.stdout and "password=outboxd" not in r.stdout
