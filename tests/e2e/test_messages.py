"""outbox_emit() (deploy/sql/outbox.sql): events written as transactional
logical messages instead of outbox rows, relayed exactly like rows; and
trace context (traceparent/tracestate) carried across the hop.

Each test uses its own message prefix (outbox.message_prefix for the relay,
the session's outboxd.message_prefix for the producer), so no test sees
another's messages."""
import json
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import APP_DSN, BROKERS, current_lsn, pg, wait_until
from loadgen import LoadGen, verify
from test_apply import Scenario, replica_database  # noqa: F401  (the replica side, for apply's trace ids)

TYPES = ("athlete", "bout")
_SQL = open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "sql", "outbox.sql")).read()
EMIT_SQL = _SQL[_SQL.index("CREATE OR REPLACE FUNCTION outbox_emit"):]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


@pytest.fixture(scope="module", autouse=True)
def emit_function():
    with pg() as c:
        c.execute(EMIT_SQL)
    yield


def mprefix(h):
    return "outboxd.event." + h.name


def start(h, **extra):
    return h.start(OUTBOXD_OUTBOX_MESSAGE_PREFIX=mprefix(h), **extra)


def producer(h):
    c = pg()
    c.execute("SELECT set_config('outboxd.message_prefix', %s, false)", (mprefix(h),))
    return c


def kafka_records(topic):
    """[(key, headers text)] of every record, read with kcat (not outboxd)."""
    out = subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-q", "-f", "%k\t%h\n"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [tuple(line.split("\t", 1)) for line in out.stdout.splitlines() if "\t" in line]


def kafka_headers(topic):
    return dict(kafka_records(topic))


def test_emit_maps_exactly_like_a_row(harness):
    """The same values once as a row and once through outbox_emit() in the
    same transaction: two records equal in everything but the event id and
    the position (topic, key, partition, payload bytes, version beyond 2^53,
    occurred_at, headers, Kafka headers)."""
    start(harness)
    payload = '{"n": 1.50, "big": 1e30, "s": "Zoë \\"q\\" \\\\", "nested": {"b": [1, {"c": null}]}}'
    headers = json.dumps({"traceparent": TRACEPARENT, "tracestate": TRACESTATE, "attempt": 2, "flag": True})
    cases = [("athlete", "a-1", 9007199254740991, None, headers), ("bout", "b-1", 1, harness.prefix + ".custom", None),
             ("athlete", "a-2", None, None, None)]
    pairs = []
    with producer(harness) as c:
        for atype, agg, ver, topic, hdrs in cases:
            with c.transaction():
                rid = c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload,"
                                " aggregate_version, topic, headers, occurred_at) VALUES (%s, %s, 'T', %s::jsonb, %s, %s,"
                                " %s::jsonb, now()) RETURNING id::text", (atype, agg, payload, ver, topic, hdrs)).fetchone()[0]
                mid = c.execute("SELECT outbox_emit(%s, %s, 'T', %s::jsonb, %s, %s, %s::jsonb)::text",
                                (atype, agg, payload, ver, topic, hdrs)).fetchone()[0]
            pairs.append((rid, mid))
    harness.wait_confirmed(current_lsn())
    events = {e["event_id"]: e for e in harness.consume(["athlete", "bout", "custom"])}
    assert len(events) == 6
    for rid, mid in pairs:
        r, m = dict(events[rid]), dict(events[mid])
        assert m["source"]["index_in_txn"] == r["source"]["index_in_txn"] + 1
        assert m["offset"] == r["offset"] + 1
        for e in (r, m):
            for k in ("event_id", "offset", "timestamp", "kafka_timestamp_ms"):  # produce time may differ
                e.pop(k, None)
            for k in ("change_lsn", "index_in_txn"):
                e["source"].pop(k)
            e["kafka_headers"] = dict(e["kafka_headers"])
            e["kafka_headers"].pop("id")
        assert m == r
    assert events[pairs[0][1]]["aggregate_version"] == 9007199254740991
    # jsonb's text, byte for byte: numbers as written, not reformatted.
    msg_payload = events[pairs[0][1]]["payload"]
    assert '"n": 1.50' in msg_payload and '"big": 1000000000000000000000000000000' in msg_payload, msg_payload
    # Kafka headers: the same but for the event id, trace context unchanged.
    a1 = [h for k, h in kafka_records(harness.prefix + ".athlete") if k == "a-1"]
    assert len(a1) == 2
    assert a1[0].replace(pairs[0][0], "ID") == a1[1].replace(pairs[0][1], "ID"), a1
    assert f"traceparent={TRACEPARENT}" in a1[1] and f"tracestate={TRACESTATE}" in a1[1], a1


def test_emit_only_producer_concurrent(harness):
    """A producer that only calls outbox_emit(), 8 writers in transactions of
    1..120 events with rollbacks and empty transactions: every committed
    event arrives once, exact, in per-aggregate order (the rows' verifier)."""
    gen = LoadGen(APP_DSN, harness.table, seed=51, aggregates=100, emit=1.0, message_prefix=mprefix(harness))
    p = start(harness)
    committed = gen.run(4_000, threads=8)
    assert all(e.get("via") == "message" for e in committed.values())
    harness.wait_confirmed(current_lsn())
    summary = verify(committed, harness.consume(TYPES), harness.slot, harness.table)
    assert summary["received"] == len(committed)
    assert p.stop() == 0
    gen.drop()


def test_rows_and_messages_mixed_exactly_once_across_kill9(harness):
    """Rows and messages mixed in the same transactions, kill -9 three times
    while writers commit: zero lost, zero duplicated, versions 1..n per
    aggregate in Kafka order (rows and messages keep their order)."""
    gen = LoadGen(APP_DSN, harness.table, seed=52, aggregates=100, emit=0.5, message_prefix=mprefix(harness))
    writer = threading.Thread(target=gen.run, args=(5_000,), kwargs={"threads": 4})
    p = start(harness)
    writer.start()
    for i in range(3):
        while len(gen.committed) < 1_000 * (i + 1):
            time.sleep(0.05)
        p.stop(signal.SIGKILL)
        p = start(harness)
    writer.join()
    via = [e.get("via") for e in gen.committed.values()]
    assert via.count("message") > 1000 and via.count(None) > 1000
    harness.wait_confirmed(current_lsn())
    summary = verify(gen.committed, harness.consume(TYPES), harness.slot, harness.table, exactly_once=True)
    assert summary["duplicates"] == 0
    assert p.stop() == 0
    gen.drop()


def test_rollback_emits_nothing_non_transactional_is_poison(harness):
    """A rolled-back outbox_emit() publishes nothing. A non-transactional
    message with the prefix (decoded even when its transaction rolls back)
    halts the relay (exit 3) without confirming past it, and with
    poison.policy = dead-letter goes to the dead-letter topic; messages with
    other prefixes are ignored."""
    p = start(harness)
    content = json.dumps({"id": "nt-1", "aggregatetype": "athlete", "aggregateid": "nt", "type": "T", "payload": "{}"})
    with producer(harness) as c:
        with c.transaction() as tx:
            c.execute("SELECT outbox_emit('athlete', 'gone', 'T', '{}')")
            raise psycopg.Rollback(tx)
    with producer(harness) as c:
        c.execute("SELECT pg_logical_emit_message(true, 'some.other.tool', 'x')")
        c.execute("SELECT outbox_emit('athlete', 'before', 'T', '{}')")
        before = current_lsn()
        c.execute("SELECT pg_logical_emit_message(false, %s, %s)", (mprefix(harness), content))
        c.execute("SELECT outbox_emit('athlete', 'after', 'T', '{}')")  # its commit flushes the message
    assert p.proc.wait(60) == 3, p.log()
    p.reader.join(5)
    assert "non-transactional" in p.log() and "nt-1" in p.log(), p.log()
    harness.wait_confirmed(before)
    with pg() as c:
        assert c.execute("SELECT confirmed_flush_lsn < %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                         (current_lsn(), harness.slot)).fetchone()[0]
    dlq = harness.prefix + ".dlq"
    p = start(harness, OUTBOXD_POISON_POLICY="dead-letter", OUTBOXD_POISON_DLQ_TOPIC=dlq)
    harness.wait_confirmed(current_lsn())
    keys = [e["aggregate_id"] for e in harness.consume(["athlete"])]
    assert sorted(keys) == ["after", "before"]  # not "gone": rolled back
    dead = kafka_headers(dlq)
    assert list(dead) == ["nt"] and "non-transactional" in dead["nt"]
    assert p.stop() == 0


def test_emit_refuses_what_the_relay_could_not_relay(harness):
    """outbox_emit() fails in the producer's transaction (with a SQLSTATE)
    for every argument the relay could only treat as poison after the
    commit: NULL type/key/aggregate type (the table's NOT NULLs), headers
    that are not an object or name outboxd's own Kafka headers, a topic that
    is not a Kafka name, a prefix outboxd can never be configured to read.
    The relay keeps going; the edge values that are fine still pass."""
    p = start(harness)
    bad = [("NULL, 'k', 'T', '{}'", "23502"), ("'athlete', NULL, 'T', '{}'", "23502"),
           ("'athlete', 'k', NULL, '{}'", "23502"),
           ("'athlete', 'k', 'T', '{}', headers => '[1]'", "22023"),
           ("'athlete', 'k', 'T', '{}', headers => '\"s\"'", "22023"),
           ("'athlete', 'k', 'T', '{}', headers => '{\"id\": \"spoof\"}'", "22023"),
           ("'athlete', 'k', 'T', '{}', headers => '{\"content-type\": \"x\"}'", "22023"),
           ("'athlete', 'k', 'T', '{}', topic => 'bad topic'", "22023"),
           ("'athlete', 'k', 'T', '{}', topic => '..'", "22023"),
           ("'athlete', 'k', 'T', '{}', topic => repeat('t', 250)", "22023")]
    with producer(harness) as c:
        for args, state in bad:
            with pytest.raises(psycopg.Error) as ex:
                c.execute(f"SELECT outbox_emit({args})")
            assert ex.value.sqlstate == state, (args, ex.value)
        for pfx in ("outboxd", "a,b", "a b", "p" * 201):
            with pytest.raises(psycopg.Error) as ex, c.transaction():
                c.execute("SELECT set_config('outboxd.message_prefix', %s, true)", (pfx,))
                c.execute("SELECT outbox_emit('athlete', 'k', 'T', '{}')")
            assert ex.value.sqlstate == "22023", (pfx, ex.value)
        c.execute("SELECT outbox_emit('athlete', 'ok-1', 'T', NULL, NULL, '', '{\"n\": 1}')")
        c.execute("SELECT outbox_emit('athlete', 'ok-2', 'T', '{}', NULL, %s)", (harness.prefix + "." + "t" * 40,))
    harness.wait_confirmed(current_lsn())
    keys = sorted(e["aggregate_id"] for e in harness.consume(["athlete", "t" * 40]))
    assert keys == ["ok-1", "ok-2"], keys
    assert p.stop() == 0


def test_trace_context_arrives_unchanged_and_apply_logs_trace_ids(harness):
    """traceparent/tracestate from outbox_emit()'s headers and from a row's
    tracingspancontext column (Debezium's java.util.Properties text) become
    Kafka headers, unchanged (an invalid traceparent too). outboxd apply
    logs the trace id of each event it applies (debug) and dead-letters
    (warn); an invalid traceparent logs as none."""
    s = Scenario(harness)
    with pg() as c:
        c.execute(f"ALTER TABLE {harness.table} ADD COLUMN tracingspancontext text")
    start(harness)
    good = {"name": "n", "country": "GB", "score": 1, "active": True, "rating": 1.5, "attrs": {"a": 1},
            "address": {"city": "c"}, "updatedAt": "2026-01-01T00:00:00+00:00"}
    tids = {k: f"{i + 1:032x}" for i, k in enumerate(("msg", "row", "poison"))}
    tp = {k: f"00-{t}-b7ad6b7169203331-01" for k, t in tids.items()}
    with producer(harness) as c:
        c.execute("SELECT outbox_emit('item', 'msg', 'ItemUpdated', %s, 1, NULL, %s)",
                  (json.dumps(good), json.dumps({"traceparent": tp["msg"], "tracestate": TRACESTATE})))
        c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload, aggregate_version,"
                  " tracingspancontext) VALUES ('item', 'row', 'ItemUpdated', %s, 1, %s)",
                  (json.dumps(good), f"#Mon Nov 30 10:00:00 UTC 2026\ntraceparent={tp['row']}\ntracestate={TRACESTATE}\n"))
        c.execute("SELECT outbox_emit('item', 'bad', 'ItemUpdated', %s, 1, NULL, %s)",
                  (json.dumps(good), json.dumps({"traceparent": "not-a-traceparent"})))
        c.execute("SELECT outbox_emit('item', 'poison', 'ItemUpdated', %s, 1, NULL, %s)",
                  (json.dumps({k: v for k, v in good.items() if k != "name"}), json.dumps({"traceparent": tp["poison"]})))
    harness.wait_confirmed(current_lsn())
    kh = kafka_headers(s.topic)
    for k in ("msg", "row"):
        assert f"traceparent={tp[k]}" in kh[k] and f"tracestate={TRACESTATE}" in kh[k], kh
    assert "traceparent=not-a-traceparent" in kh["bad"]
    p = s.start_apply("g-trace", OUTBOXD_LOG_LEVEL="debug", OUTBOXD_APPLY_POISON_POLICY="dead-letter",
                      OUTBOXD_APPLY_POISON_DLQ_TOPIC=harness.prefix + ".dlq")
    wait_until(lambda: {r[0] for r in s.replica(cols="id")} == {"msg", "row", "bad"}, timeout=60, what="applied")
    p.wait_for(r"dead_lettered: .*\(trace id %s\)" % tids["poison"])
    for k in ("msg", "row"):
        p.wait_for(r"applied: .*key %s version 1 upsert \(trace id %s\)" % (k, tids[k]))
    p.wait_for(r"applied: .*key bad version 1 upsert \(trace id none\)")
    assert p.stop() == 0
    s.drop()
