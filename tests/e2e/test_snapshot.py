"""Snapshots and reconciliation against real PostgreSQL and Kafka: current
state re-emitted while the live stream runs, resumable, filtered, triggered
by a signal row; newest version wins on the consumer side."""
import json
import os
import random
import re
import signal
import subprocess
import threading
import time

import psycopg

from conftest import APP_DSN, BIN, RELAY_DSN, current_lsn, free_port, http_get, metric, pg, wait_until

PAYLOAD_SQL = "jsonb_build_object('id', t.id, 'status', t.status, 'version', t.version)"
SIGNALS_DDL = open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "sql", "outbox.sql")).read()
SIGNALS_DDL = SIGNALS_DDL[SIGNALS_DDL.index("CREATE TABLE IF NOT EXISTS outboxd_signals"):]


def make_table(name, rows):
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")
        c.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, status text NOT NULL, version bigint)")
        c.execute(f"INSERT INTO {name} SELECT 'r' || g, 'active', 1 FROM generate_series(1, {rows}) g")
        c.execute(f"ANALYZE {name}")


class LiveUpdater:
    """The producer service: update a row and insert its outbox event in one
    transaction, with the same payload shape as the snapshot's."""

    def __init__(self, harness, table, rows):
        self.h, self.table, self.rows = harness, table, rows
        self.stop = threading.Event()
        self.n = 0

    def run(self):
        rnd = random.Random(5)
        with pg() as c:
            while not self.stop.is_set():
                with c.transaction():
                    for _ in range(10):
                        rid = f"r{rnd.randint(1, self.rows)}"
                        st = rnd.choice(["active", "retired", "suspended"])
                        v = c.execute(f"UPDATE {self.table} SET status = %s, version = version + 1 WHERE id = %s"
                                      " RETURNING version", (st, rid)).fetchone()[0]
                        c.execute(f"INSERT INTO {self.h.table}(aggregatetype, aggregateid, type, payload, aggregate_version)"
                                  " VALUES ('athlete', %s, 'AthleteUpdated', %s, %s)",
                                  (rid, json.dumps({"id": rid, "status": st, "version": v}), v))
                        self.n += 1
                time.sleep(0.01)

    def __enter__(self):
        self.t = threading.Thread(target=self.run)
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join()


def snapshot(harness, table, *args, wait=True, env=None):
    cmd = [BIN, "snapshot", "--table", table, "--set", "snapshot.aggregate_type=athlete",
           "--set", f"snapshot.payload_sql={PAYLOAD_SQL}", *args]
    full = {**os.environ, **harness.env(), **(env or {})}
    if wait:
        return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def newest_wins(events):
    state = {}
    for e in events:
        v = e["aggregate_version"]
        if e["aggregate_id"] not in state or v > state[e["aggregate_id"]]["version"]:
            p = json.loads(e["payload"])
            state[e["aggregate_id"]] = {"status": p["status"], "version": v}
    return state


def source_state(table):
    with pg() as c:
        return {r[0]: {"status": r[1], "version": r[2]} for r in c.execute(f"SELECT id, status, version FROM {table}")}


def test_snapshot_200k_rows_while_live_updates_hit_them(harness):
    """A consumer applying newest-version-wins ends with exactly the table."""
    table = harness.table + "_src"
    make_table(table, 200_000)
    p = harness.start()
    with LiveUpdater(harness, table, 200_000) as live:
        r = snapshot(harness, table, "--page-size", "2000")
    assert r.returncode == 0, r.stderr[-3000:]
    assert live.n > 100, live.n
    harness.wait_confirmed(current_lsn(), timeout=120)
    events = harness.consume(["athlete"], idle_ms=6000)
    snap = [e for e in events if e["event_type"] == "snapshot"]
    assert len(snap) == 200_000
    assert newest_wins(events) == source_state(table)
    rate = re.search(r"\(([0-9]+) rows/s\)", r.stderr).group(1)
    print(f"snapshot rate: {rate} rows/s, {live.n} live updates during it")
    os.makedirs(os.path.join(os.path.dirname(__file__), "..", "..", "build"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "build", "snapshot-rate.txt"), "w") as f:
        f.write(f"{rate} rows/s for 200000 rows, page 2000, {live.n} concurrent live updates\n")
    assert p.stop() == 0
    with pg() as c:
        c.execute(f"DROP TABLE {table}")


def test_snapshot_killed_resumes_resending_at_most_one_page(harness):
    table = harness.table + "_src"
    make_table(table, 20_000)
    proc = snapshot(harness, table, "--page-size", "1000", "--rate-limit", "4000", "--name", harness.table, "--restart",
                    wait=False)
    time.sleep(2.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with pg(RELAY_DSN) as c:
        done = c.execute("SELECT rows_done, status FROM outboxd_snapshots WHERE name = %s", (harness.table,)).fetchone()
    assert done and 0 < done[0] < 20_000 and done[1] == "running", done
    r = snapshot(harness, table, "--page-size", "1000", "--name", harness.table)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumes after key" in r.stderr
    events = harness.consume(["athlete"])
    ids = [e["aggregate_id"] for e in events]
    assert set(ids) == {f"r{i}" for i in range(1, 20_001)}
    assert len(ids) - 20_000 <= 1000, len(ids) - 20_000
    assert newest_wins(events) == source_state(table)
    with pg(RELAY_DSN) as c:
        assert c.execute("SELECT status, rows_done FROM outboxd_snapshots WHERE name = %s",
                         (harness.table,)).fetchone() == ("done", 20_000)
    with pg() as c:
        c.execute(f"DROP TABLE {table}")


def test_reconcile_with_a_filter_emits_exactly_the_matching_aggregates(harness):
    table = harness.table + "_src"
    make_table(table, 5_000)
    r = snapshot(harness, table, "--where", "t.id LIKE 'r1%'", "--name", harness.table + "_r", "--restart")
    assert r.returncode == 0, r.stderr
    got = {e["aggregate_id"] for e in harness.consume(["athlete"])}
    with pg() as c:
        want = {row[0] for row in c.execute(f"SELECT id FROM {table} WHERE id LIKE 'r1%'")}
        c.execute(f"DROP TABLE {table}")
    assert got == want and len(want) == 1_111


def test_bad_snapshot_input_is_refused_and_publishes_nothing(harness):
    table = harness.table + "_src"
    make_table(table, 100)
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}_nopk")
        c.execute(f"CREATE TABLE {table}_nopk (id text, version bigint)")
        c.execute(f"INSERT INTO {table}_nopk VALUES ('a', 1)")
        c.execute(f"UPDATE {table} SET version = NULL WHERE id = 'r1'")
    cases = [
        (["--table", "no_such_table"], 2, "does not exist"),
        (["--table", f"{table}_nopk"], 2, "no primary key"),
        (["--set", "snapshot.version_column=nope"], 2, 'no version column "nope"'),
        (["--page-size", "0"], 2, "snapshot.page_size is not an integer in [1, 1000000]"),
        ([], 3, "is NULL"),  # r1 has a NULL version: nothing of the page goes out
    ]
    for extra, code, msg in cases:
        r = snapshot(harness, table, "--restart", *extra)
        assert r.returncode == code and msg in r.stderr, (extra, r.returncode, r.stderr[-1500:])
    assert harness.consume(["athlete"], idle_ms=3000) == []
    with pg() as c:
        c.execute(f"DROP TABLE {table}, {table}_nopk")


def test_signal_row_starts_a_snapshot_inside_the_running_relay(harness):
    table = harness.table + "_src"
    make_table(table, 3_000)
    with pg() as c:
        c.execute(SIGNALS_DDL)
        # A table from before signals counted attempts (deploy/sql/outbox.sql's upgrade line).
        c.execute("ALTER TABLE outboxd_signals ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0")
    port = free_port()
    # Signals carry no SQL: the payload shape and the tables a signal may
    # name come from the configuration.
    p = harness.start(OUTBOXD_STATUS_LISTEN=f"127.0.0.1:{port}", OUTBOXD_SNAPSHOT_PAYLOAD_SQL=PAYLOAD_SQL,
                      OUTBOXD_SIGNAL_ALLOWED_TABLES=table)
    with pg() as c:
        sid = c.execute("INSERT INTO outboxd_signals(type, data) VALUES ('snapshot', %s) RETURNING id",
                        (json.dumps({"table": table, "aggregate_type": "athlete",
                                     "name": harness.table + "_sig", "restart": True, "page_size": 500}),)).fetchone()[0]
        wait_until(lambda: c.execute("SELECT status FROM outboxd_signals WHERE id = %s", (sid,)).fetchone()[0] == "done",
                   timeout=60, what="signal done")
    m = http_get(port, "/metrics")[1]
    assert metric(m, "outboxd_snapshot_rows_done", slot=harness.slot) == 3_000
    assert metric(m, "outboxd_snapshot_running", slot=harness.slot) == 0
    events = harness.consume(["athlete"])
    assert newest_wins(events) == source_state(table)
    assert p.stop() == 0
    with pg() as c:
        c.execute(f"DROP TABLE {table}")


def test_sigterm_while_kafka_is_unreachable_ends_within_the_shutdown_timeout(harness):
    """exactly_once never times messages out, so only the stop flag ends the
    wait for a page's acks: the process exits within shutdown.timeout_ms and
    the checkpoint does not move past anything unacked."""
    table = harness.table + "_src"
    make_table(table, 2_000)
    name = harness.table + "_down"
    proc = snapshot(harness, table, "--page-size", "500", "--name", name, "--restart", wait=False,
                    env={"OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "OUTBOXD_EXACTLY_ONCE": "true",
                         "OUTBOXD_SHUTDOWN_TIMEOUT_MS": "3000"})
    with pg(RELAY_DSN) as c:
        wait_until(lambda: c.execute("SELECT status FROM outboxd_snapshots WHERE name = %s", (name,)).fetchone()
                   == ("running",), timeout=30, what="snapshot running")
    time.sleep(1.0)  # the first page is queued and waits for acks that never come
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert took < 3.0 + 1.5, (took, err[-2000:])
    assert proc.returncode == 0, err[-2000:]
    assert "snapshot_interrupted" in err, err[-2000:]
    with pg(RELAY_DSN) as c:
        row = c.execute("SELECT last_key, rows_done, status FROM outboxd_snapshots WHERE name = %s", (name,)).fetchone()
    assert row == (None, 0, "interrupted"), row
    with pg() as c:
        c.execute(f"DROP TABLE {table}")


def test_snapshot_event_ids_stay_unique_for_long_keys(harness):
    """Event ids are never cut: two 400-byte keys that differ only at the end
    (and a long checkpoint name) give two ids, each holding its whole key."""
    table = harness.table + "_src"
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, status text NOT NULL, version bigint)")
        c.execute(f"INSERT INTO {table} SELECT repeat('k', 399) || g, 'active', 1 FROM generate_series(1, 3) g")
    name = harness.table + "_" + "n" * 200
    r = snapshot(harness, table, "--name", name, "--restart")
    assert r.returncode == 0, r.stderr[-2000:]
    events = harness.consume(["athlete"])
    ids = sorted(e["event_id"] for e in events)
    assert ids == [f"snapshot:{name}:{'k' * 399}{g}:1" for g in (1, 2, 3)], ids
    with pg() as c:
        c.execute(f"DROP TABLE {table}")
