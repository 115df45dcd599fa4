"""Exactly-once when outboxd is not the only writer of its partitions (issue
19): an `outboxd snapshot` into the live topic while writers commit outbox
events, the relay killed -9 three times during the snapshot; and the same
with another producer writing many records into the same partitions between
the crashes. The read-back after each restart must find outboxd's newest
record behind all of them: 0 missing, 0 duplicates, order per aggregate.

CI runs a scaled version; OBX_EOS_FULL=1 runs the issue's size (200k
snapshot rows, 30k events, 100k foreign records)."""
import os
import re
import signal
import subprocess
import threading
import time

from conftest import APP_DSN, BIN, BROKERS, RELAY_DSN, current_lsn, free_port, http_get, metric, pg, wait_until
from loadgen import LoadGen, verify
from test_faults import record

FULL = os.environ.get("OBX_EOS_FULL") == "1"
SNAP_ROWS = 200_000 if FULL else 20_000
EVENTS = 30_000 if FULL else 3_000
FOREIGN = 100_000 if FULL else 10_000
KILLS = 3
TYPES = ("athlete", "bout")
PAYLOAD_SQL = "jsonb_build_object('id', t.id, 'status', t.status, 'version', t.version)"


def make_source(name, rows):
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")
        c.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, status text NOT NULL, version bigint)")
        c.execute(f"INSERT INTO {name} SELECT 's' || g, 'active', 1 FROM generate_series(1, {rows}) g")
        c.execute(f"ANALYZE {name}")


def start_snapshot(h, table, rate):
    """`outboxd snapshot` into the live topic of aggregate type athlete."""
    cmd = [BIN, "snapshot", "--table", table, "--set", "snapshot.aggregate_type=athlete",
           "--set", f"snapshot.payload_sql={PAYLOAD_SQL}", "--page-size", "1000", "--rate-limit", str(rate),
           "--name", h.table, "--restart"]
    return subprocess.Popen(cmd, env={**os.environ, **h.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _field(number, b):
    """One length-delimited protobuf field (short: a one-byte length)."""
    b = b.encode() if isinstance(b, str) else b
    assert len(b) < 128
    return bytes([number << 3 | 2, len(b)]) + b


def produce_foreign(topic, n, start):
    """n records of another writer, keyed over every partition: envelopes
    (so `outboxd consume` reads them) of slot "other-writer", written with
    kcat. No field is a newline or ':' byte (kcat's delimiters)."""
    lines = []
    for i in range(start, start + n):
        key = f"fk-{i:08d}"
        value = _field(3, key) + _field(5, "foreign") + _field(10, _field(9, "other-writer"))
        assert b"\n" not in value and b":" not in value
        lines.append(key.encode() + b":" + value)
    out = subprocess.run(["kcat", "-P", "-b", BROKERS, "-t", topic, "-K", ":"], input=b"\n".join(lines) + b"\n",
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr


def chaos(harness, foreign):
    """The scenario; returns the figures."""
    t0 = time.time()
    harness.create_slot()
    src = harness.table + "_src"
    make_source(src, SNAP_ROWS)
    gen = LoadGen(APP_DSN, harness.table, seed=19, aggregates=200)
    # Throttled so the writers and the snapshot overlap every crash.
    rate_sleep = 0.01 if FULL else 0.02
    writer = threading.Thread(target=gen.run, args=(EVENTS,), kwargs={"threads": 4, "rate_sleep": rate_sleep})
    relay = harness.start()
    writer.start()
    snap = start_snapshot(harness, src, 25_000 if FULL else 3_000)
    skipped, fallbacks, readback = 0, 0, []  # readback: (records, ms) per partition read back
    per_gap = FOREIGN // KILLS
    for i in range(KILLS):
        time.sleep(1.5)
        relay.stop(signal.SIGKILL)
        log = relay.log()
        skipped += len(re.findall("dedup_skip", log))
        fallbacks += len(re.findall("exactly_once_fallback", log))
        readback += [(int(n), int(ms)) for n, ms in re.findall(r"(\d+) records read in (\d+) ms", log)]
        if foreign:
            produce_foreign(f"{harness.prefix}.athlete", per_gap + (FOREIGN % KILLS if i == 0 else 0), i * per_gap * 2)
        else:
            time.sleep(1.0)  # the snapshot writes on while the relay is down
        relay = harness.start(OUTBOXD_LOG_LEVEL="debug")
    assert snap.wait(600) == 0, snap.stderr.read()
    writer.join()
    harness.wait_confirmed(current_lsn(), timeout=300)
    relay.stop(signal.SIGKILL)
    log = relay.log()
    skipped += len(re.findall("dedup_skip", log))
    fallbacks += len(re.findall("exactly_once_fallback", log))
    readback += [(int(n), int(ms)) for n, ms in re.findall(r"(\d+) records read in (\d+) ms", log)]
    # One last start: its read-back must skip everything already in Kafka.
    port = free_port()
    final = harness.start(OUTBOXD_STATUS_LISTEN=f"127.0.0.1:{port}")
    harness.wait_confirmed(current_lsn(), timeout=120)
    m = http_get(port, "/metrics")[1]
    fallbacks += int(metric(m, "outboxd_exactly_once_fallback_total", slot=harness.slot) or 0)
    events = harness.consume(TYPES)
    ours = [e for e in events if not e["event_id"].startswith("snapshot:") and e["source"]["slot"] != "other-writer"]
    snaps = {e["event_id"] for e in events if e["event_id"].startswith("snapshot:")}
    others = sum(1 for e in events if e["source"]["slot"] == "other-writer")
    summary = verify(gen.committed, ours, harness.slot, harness.table, exactly_once=True)
    figures = dict(committed=summary["committed"], received=summary["received"], duplicates=summary["duplicates"],
                   missing=0, snapshot_rows=len(snaps), foreign=others, skipped_by_read_back=skipped,
                   fallbacks=fallbacks,
                   read_back_records_max=max([n for n, _ in readback] or [0]),
                   read_back_ms_max=max([ms for _, ms in readback] or [0]), seconds=round(time.time() - t0, 1))
    assert final.stop() == 0
    assert len(snaps) == SNAP_ROWS
    assert others == (FOREIGN if foreign else 0)
    assert fallbacks == 0, "the broker's time index answered every read-back"
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {src}")
    gen.drop()
    return figures


def test_snapshot_into_live_topic_kill9_three_times_exactly_once(harness):
    """Issue 19's scenario: snapshot records in the live topic push
    outboxd's newest record far from the tail; 0 duplicates anyway."""
    record("snapshot into the live topic, kill -9 x3" + (" (full)" if FULL else ""), **chaos(harness, False))


def test_foreign_producer_between_crashes_exactly_once(harness):
    """The same with another producer writing many records into the same
    partitions between the crashes."""
    record("snapshot + foreign producer, kill -9 x3" + (" (full)" if FULL else ""), **chaos(harness, True))


# --- the read-back against other writers' Kafka features (hostile test of
# issue 19): an open transaction of another producer, partitions added.

HELPER_SRC = os.path.join(os.path.dirname(__file__), "helpers", "kafka_txn.c")


def kafka_helper(tmp_path):
    """tests/e2e/helpers/kafka_txn.c, built against the system librdkafka."""
    exe = str(tmp_path / "kafka_txn")
    subprocess.run(["cc", "-O1", "-o", exe, HELPER_SRC, "-lrdkafka"], check=True, timeout=120)
    return exe


def insert_events(table, n, keys=50):
    with pg() as c:
        return [r[0] for r in c.execute(
            f"INSERT INTO {table} (aggregatetype, aggregateid, type, payload, aggregate_version) "
            f"SELECT 'athlete', 'k' || (g % {keys}), 'AthleteUpdated', '{{}}', g FROM generate_series(1, {n}) g "
            "RETURNING id::text").fetchall()]


def crash_with_window(h, n):
    """n events published and acked, and the slot back where it was before
    them, as a kill -9 right after the acks leaves it (a copy of the slot
    taken before, put back): the next start replays all n. Their ids."""
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (h.slot, h.slot + "_bak"))
    relay = h.start()
    ids = insert_events(h.table, n)
    h.wait_confirmed(current_lsn())
    relay.stop(signal.SIGKILL)
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (h.slot,))
        c.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (h.slot + "_bak", h.slot))
        c.execute("SELECT pg_drop_replication_slot(%s)", (h.slot + "_bak",))
    return ids


def restart(h):
    relay = h.start(OUTBOXD_LOG_LEVEL="debug")
    h.wait_confirmed(current_lsn(), timeout=60)
    assert relay.stop() == 0
    return relay.log()


def count(h, ids):
    """Missing ids, duplicates (read_committed: after any open transaction
    ended)."""
    counts = {}
    for e in h.consume(["athlete"]):
        counts[e["event_id"]] = counts.get(e["event_id"], 0) + 1
    missing = [i for i in ids if i not in counts]
    duplicates = sum(c - 1 for c in counts.values())
    return missing, duplicates


def first_event(h):
    """The topic exists (3 partitions, the broker's default) and the slot
    is confirmed past a first event."""
    relay = h.start()
    ids = insert_events(h.table, 1)
    h.wait_confirmed(current_lsn())
    assert relay.stop() == 0
    return ids


def test_open_foreign_transaction_does_not_hide_our_records(harness, tmp_path):
    """Another producer's open transaction in every partition holds the last
    stable offset: a read_committed read-back saw none of outboxd's records
    after it and re-sent the whole window. 0 duplicates, all skipped."""
    ids = first_event(harness)
    txn = subprocess.Popen([kafka_helper(tmp_path), BROKERS, "open-txn", f"{harness.prefix}.athlete"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert txn.stdout.readline().startswith("open "), "the foreign transaction did not open"
        ids += crash_with_window(harness, 500)
        log = restart(harness)
    finally:
        txn.stdin.close()
        txn.wait(60)
    assert count(harness, ids) == ([], 0)
    assert len(re.findall("dedup_skip", log)) == 500


def test_partitions_added_between_crashes_lose_nothing(harness, tmp_path):
    """Partitions added after a crash change the key -> partition map: an
    event of the window may have been in flight to its old partition while
    a newer record of ours landed in its new one. That newer record must
    not make the event count as sent: the window is sent again, said in the
    log and the fallback metric (duplicates, never loss)."""
    ids = first_event(harness)
    ids += crash_with_window(harness, 500)
    out = subprocess.run([kafka_helper(tmp_path), BROKERS, "add-partitions", f"{harness.prefix}.athlete", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    log = restart(harness)
    missing, duplicates = count(harness, ids)
    assert missing == []
    assert "had 3 partitions when this slot's newest record here was written and has 5 now" in log
    assert duplicates > 0  # the window, re-sent on purpose
