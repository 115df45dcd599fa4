"""outboxd apply (the replica side) against real PostgreSQL and Kafka.

Two databases that share nothing but the event stream: the producer `app`
(source table + outbox, relayed by `outboxd run`) and `replica` (the
consumer's copy, written by `outboxd apply`). Each test has its own outbox,
slot, topic prefix, replica table and consumer group."""
import ctypes
import json
import os
import random
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import (APP_DSN, BIN, BROKERS, PG_PORT, Outboxd, current_lsn, free_port, http_get, metric, pg,
                      services, wait_until)

SUPER_POSTGRES = f"host=127.0.0.1 port={PG_PORT} dbname=postgres user=postgres"
REPLICA_SUPER = f"host=127.0.0.1 port={PG_PORT} dbname=replica user=postgres"
# apply logs in as its own role with only the grants it needs.
REPLICA_APPLY = f"host=127.0.0.1 port={PG_PORT} dbname=replica user=replica_writer password=replica_writer"
RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "build", "apply-results.jsonl")
# The naive one-upsert-per-event consumer, the baseline of the rate test
# (bench/apply_row.c; not part of the daemon).
BENCH_APPLY_ROW = os.path.join(os.path.dirname(BIN), "bench_apply_row")
MAPPING = "name:name, country:country, score:score, active:active, rating:rating, attrs:attrs, city:address.city?"
SRC_COLS = "id, name, country, score, active, rating, attrs, city, version, updated_at"
REP_COLS = "id, name, country, score, active, rating, attrs, city, source_version, source_updated_at"


def record(name, **figures):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"scenario": name, **figures}) + "\n")
    print(name, figures)


@pytest.fixture(scope="module", autouse=True)
def replica_database():
    """The consumer's own database and role (created once; idempotent)."""
    with psycopg.connect(SUPER_POSTGRES, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'replica_writer'").fetchone():
            c.execute("CREATE ROLE replica_writer LOGIN PASSWORD 'replica_writer'")
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = 'replica'").fetchone():
            c.execute("CREATE DATABASE replica")
    yield


class Scenario:
    """Source table + outbox in `app`, replica (+ tombstones) in `replica`,
    a relay and apply processes."""

    def __init__(self, harness, check_sql=None, trigger_sleep=None):
        self.h = harness
        self.src = "src_" + harness.name[:40]
        self.rep = "rep_" + harness.name[:40]
        self.tomb = self.rep + "_tombstones"
        self.topic = harness.prefix + ".item"
        self.applies = []
        with pg() as c:
            c.execute(f"DROP TABLE IF EXISTS {self.src}")
            c.execute(f"""CREATE TABLE {self.src} (
                id text PRIMARY KEY, name text NOT NULL, country text, score bigint NOT NULL,
                active boolean NOT NULL, rating numeric, attrs jsonb, city text,
                version bigint NOT NULL, updated_at timestamptz NOT NULL)""")
        self.make_replica(self.rep, check_sql=check_sql, trigger_sleep=trigger_sleep)

    def make_replica(self, table, check_sql=None, trigger_sleep=None):
        with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {table}, {table}_tombstones")
            c.execute(f"""CREATE TABLE {table} (
                id text PRIMARY KEY, name text NOT NULL, country text, score bigint NOT NULL,
                active boolean NOT NULL, rating numeric, attrs jsonb, city text,
                source_version bigint NOT NULL, source_updated_at timestamptz NOT NULL,
                replicated_at timestamptz NOT NULL {(', CHECK (' + check_sql + ')') if check_sql else ''})""")
            c.execute(f"""CREATE TABLE {table}_tombstones (id text PRIMARY KEY, source_version bigint NOT NULL,
                source_updated_at timestamptz NOT NULL, replicated_at timestamptz NOT NULL)""")
            c.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, {table}_tombstones TO replica_writer")
            if trigger_sleep:
                # Every batch statement takes this long: apply is mid-transaction most of the time.
                c.execute(f"CREATE OR REPLACE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS"
                          f" $$ BEGIN PERFORM pg_sleep({trigger_sleep}); RETURN NULL; END $$")
                c.execute(f"CREATE TRIGGER slow AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {table}_slow()")

    def apply_env(self, group, table=None, **extra):
        table = table or self.rep
        self.port = free_port()
        e = {
            "OUTBOXD_APPLY_CONNINFO": REPLICA_APPLY,
            "OUTBOXD_APPLY_TOPICS": self.topic,
            "OUTBOXD_APPLY_GROUP": group,
            "OUTBOXD_APPLY_TABLE": table,
            "OUTBOXD_APPLY_KEY_COLUMN": "id",
            "OUTBOXD_APPLY_COLUMNS": MAPPING,
            "OUTBOXD_APPLY_DELETE_TYPES": "ItemDeleted",
            "OUTBOXD_APPLY_SOURCE_TIME": "payload:updatedAt",
            "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": BROKERS,
            "OUTBOXD_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": "1000",
            "OUTBOXD_LOG_FORMAT": "text",
            "OUTBOXD_STATUS_LISTEN": f"127.0.0.1:{self.port}",
            "OUTBOXD_RECONNECT_BACKOFF_MAX_MS": "2000",
        }
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def start_apply(self, group, wait=True, binary=None, **extra):
        env = self.apply_env(group, **extra)
        p = Outboxd(env, args=() if binary else ("apply",), binary=binary)
        p.port = int(env["OUTBOXD_STATUS_LISTEN"].rsplit(":", 1)[1])
        self.applies.append(p)
        self.h.procs.append(p)
        if wait:
            p.wait_for(r"assigned: group", timeout=60)
        return p

    # --- the producer side -------------------------------------------------
    def create(self, n, prefix="item", per_txn=1000):
        for start in range(0, n, per_txn):
            ids = [f"{prefix}-{i}" for i in range(start, min(n, start + per_txn))]
            with pg() as c:
                c.execute(f"""WITH u AS (
                    INSERT INTO {self.src}
                    SELECT id, 'name ' || id, (ARRAY['GB','BR',NULL,'JP','PL'])[1 + mod(abs(hashtext(id)), 5)],
                           (random() * 1e12)::bigint - 500000000000, random() < 0.5,
                           CASE WHEN random() < 0.2 THEN NULL ELSE round((random() * 100)::numeric, 2) END,
                           jsonb_build_object('tier', (random() * 5)::int, 'tags', jsonb_build_array('a', 'Zoë')),
                           CASE WHEN random() < 0.3 THEN NULL ELSE 'Łódź ' || (random() * 9)::int END,
                           1, clock_timestamp()
                      FROM unnest(%s::text[]) id RETURNING *)
                    {self._outbox_insert('ItemCreated')}""", (ids,))

    def _outbox_insert(self, etype):
        return f"""INSERT INTO {self.h.table} (aggregatetype, aggregateid, type, payload, aggregate_version)
            SELECT 'item', u.id, '{etype}', jsonb_build_object('id', u.id, 'name', u.name, 'country', u.country,
                   'score', u.score, 'active', u.active, 'rating', u.rating, 'attrs', u.attrs,
                   'address', jsonb_build_object('city', u.city), 'updatedAt', u.updated_at), u.version FROM u"""

    def update(self, conn, ids):
        return conn.execute(f"""WITH u AS (
            UPDATE {self.src} s SET name = 'Zoë ' || substr(md5(random()::text), 1, 8),
                   score = (random() * 1e12)::bigint - 500000000000, active = random() < 0.5,
                   rating = CASE WHEN random() < 0.2 THEN NULL ELSE round((random() * 100)::numeric, 2) END,
                   attrs = jsonb_build_object('tier', (random() * 5)::int, 'q', 'quote " and \\ backslash'),
                   city = CASE WHEN random() < 0.3 THEN NULL ELSE 'city ' || (random() * 99)::int END,
                   version = s.version + 1, updated_at = clock_timestamp()
             WHERE s.id = ANY(%s) RETURNING s.*)
            {self._outbox_insert('ItemUpdated')}""", (sorted(ids),)).rowcount

    def delete(self, conn, agg):
        return conn.execute(f"""WITH u AS (DELETE FROM {self.src} WHERE id = %s RETURNING id, name, country, score,
                active, rating, attrs, city, version + 1 AS version, clock_timestamp() AS updated_at)
            {self._outbox_insert('ItemDeleted')}""", (agg,)).rowcount

    def writers(self, n_txns, ids, threads=8, delete_every=50, seed=1, pause=0.0, stop_on_error=False):
        """Concurrent producer transactions: updates of 1..20 aggregates, some
        deletes. Returns (threads, counter dict)."""
        counts = {"events": 0, "errors": 0}
        lock = threading.Lock()

        def work(t):
            rnd = random.Random(seed * 100 + t)
            done = 0
            conn = None
            while done < n_txns // threads:
                try:
                    if conn is None:
                        conn = psycopg.connect(APP_DSN, autocommit=True)
                    if delete_every and rnd.randrange(delete_every) == 0:
                        n = self.delete(conn, rnd.choice(ids))
                    else:
                        n = self.update(conn, rnd.sample(ids, rnd.randint(1, 20)))
                    with lock:
                        counts["events"] += n
                    done += 1
                    if pause:
                        time.sleep(pause)
                except psycopg.Error:
                    with lock:
                        counts["errors"] += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    if stop_on_error:
                        return
                    time.sleep(0.5)
            if conn is not None:
                conn.close()

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        return ts, counts

    # --- comparing -----------------------------------------------------------
    def source(self):
        with pg() as c:
            return c.execute(f"SELECT {SRC_COLS} FROM {self.src} ORDER BY id").fetchall()

    def replica(self, table=None, cols=REP_COLS):
        with psycopg.connect(REPLICA_SUPER) as c:
            return c.execute(f"SELECT {cols} FROM {table or self.rep} ORDER BY id").fetchall()

    def tombstones(self, table=None):
        with psycopg.connect(REPLICA_SUPER) as c:
            return dict(c.execute(f"SELECT id, source_version FROM {(table or self.rep)}_tombstones").fetchall())

    def wait_converged(self, table=None, timeout=120):
        deadline = time.time() + timeout
        while True:
            src, rep = self.source(), self.replica(table)
            if src == rep:
                return src
            if time.time() > deadline:
                s, r = {x[0]: x for x in src}, {x[0]: x for x in rep}
                diff = [(k, s.get(k), r.get(k)) for k in sorted(set(s) | set(r)) if s.get(k) != r.get(k)]
                raise AssertionError(f"replica {table or self.rep} != source: {len(diff)} rows differ, e.g. {diff[:3]}\n"
                                     + "\n---\n".join(p.log()[-3000:] for p in self.applies))
            time.sleep(1)

    def drop(self):
        with pg() as c:
            c.execute(f"DROP TABLE IF EXISTS {self.src}")


def metrics(p):
    return http_get(p.port, "/metrics")[1]


def consumed(p):
    m = metrics(p)
    return sum(metric(m, f"outboxd_apply_events_{k}_total") or 0
               for k in ("applied", "stale_ignored", "superseded", "skipped", "dead_lettered"))


def offset_lag(p):
    return sum(max(0, float(line.rsplit(" ", 1)[1])) for line in metrics(p).splitlines()
               if line.startswith("outboxd_apply_consumer_lag_messages{"))


def topic_messages(topic):
    """(partition, offset, key, version) of every record, via outboxd consume."""
    out = subprocess.run([BIN, "consume", "--brokers", BROKERS, "--topic", topic, "--idle-exit-ms", "4000"],
                         capture_output=True, text=True, timeout=300)
    return [(e["partition"], e["offset"], e["aggregate_id"], e["aggregate_version"])
            for e in map(json.loads, filter(str.strip, out.stdout.splitlines()))]


# --- committed offsets, read independently of outboxd through librdkafka ---
class _TP(ctypes.Structure):
    _fields_ = [("topic", ctypes.c_char_p), ("partition", ctypes.c_int32), ("offset", ctypes.c_int64),
                ("metadata", ctypes.c_void_p), ("metadata_size", ctypes.c_size_t), ("opaque", ctypes.c_void_p),
                ("err", ctypes.c_int), ("_private", ctypes.c_void_p)]


class _TPL(ctypes.Structure):
    _fields_ = [("cnt", ctypes.c_int), ("size", ctypes.c_int), ("elems", ctypes.POINTER(_TP))]


def committed_offsets(group, topic, partitions=3):
    """{partition: committed offset} of a consumer group (-1001: none)."""
    rk_lib = ctypes.CDLL("librdkafka.so.1")
    rk_lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    rk_lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    rk_lib.rd_kafka_new.restype = ctypes.c_void_p
    rk_lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    rk_lib.rd_kafka_topic_partition_list_new.restype = ctypes.POINTER(_TPL)
    rk_lib.rd_kafka_topic_partition_list_add.argtypes = [ctypes.POINTER(_TPL), ctypes.c_char_p, ctypes.c_int32]
    rk_lib.rd_kafka_topic_partition_list_add.restype = ctypes.POINTER(_TP)
    rk_lib.rd_kafka_committed.argtypes = [ctypes.c_void_p, ctypes.POINTER(_TPL), ctypes.c_int]
    rk_lib.rd_kafka_topic_partition_list_destroy.argtypes = [ctypes.POINTER(_TPL)]
    rk_lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    err = ctypes.create_string_buffer(512)
    conf = rk_lib.rd_kafka_conf_new()
    for k, v in (("bootstrap.servers", BROKERS), ("group.id", group), ("enable.auto.commit", "false")):
        assert rk_lib.rd_kafka_conf_set(conf, k.encode(), v.encode(), err, 512) == 0, err.value
    rk = rk_lib.rd_kafka_new(1, conf, err, 512)  # RD_KAFKA_CONSUMER, never subscribes: no group join
    assert rk, err.value
    try:
        lst = rk_lib.rd_kafka_topic_partition_list_new(partitions)
        for p in range(partitions):
            rk_lib.rd_kafka_topic_partition_list_add(lst, topic.encode(), p)
        for _ in range(5):
            rc = rk_lib.rd_kafka_committed(rk, lst, 10000)
            if rc == 0:
                break
            time.sleep(1)
        assert rc == 0, f"rd_kafka_committed: {rc}"
        out = {lst.contents.elems[i].partition: lst.contents.elems[i].offset for i in range(lst.contents.cnt)}
        rk_lib.rd_kafka_topic_partition_list_destroy(lst)
        return out
    finally:
        rk_lib.rd_kafka_destroy(rk)


def check_offsets_behind_rows(offsets, messages, scenario):
    """Every record below a committed offset is in the replica: the row (or
    its tombstone) holds that version or a newer one. Offsets are read before
    the rows, and rows only move forward, so this holds at any moment."""
    rows = {r[0]: r[-1] for r in scenario.replica(cols="id, source_version")}
    tombs = scenario.tombstones()
    behind = []
    for part, off, key, ver in messages:
        if 0 <= off < offsets.get(part, -1):
            have = max(rows.get(key, 0), tombs.get(key, 0))
            if have < ver:
                behind.append((part, off, key, ver, have))
    assert not behind, f"{len(behind)} committed records not in the replica, e.g. {behind[:5]}"


# --------------------------------------------------------------------- tests

def test_replica_converges_to_source_with_concurrent_updates_to_10k_aggregates(harness):
    """10k aggregates, 8 writers updating random sets of them (and deleting
    some) while outboxd run and outboxd apply stream: the replica ends equal
    to the source, every row, every mapped column, every version, and the
    deleted aggregates are tombstones."""
    s = Scenario(harness)
    harness.start()
    s.create(10_000)
    a = s.start_apply("g-converge")
    ids = [f"item-{i}" for i in range(10_000)]
    ts, counts = s.writers(2_000, ids, seed=3)
    for t in ts:
        t.join(300)
    assert counts["errors"] == 0
    src = s.wait_converged(timeout=180)
    assert len(src) < 10_000  # some were deleted
    deleted = set(ids) - {r[0] for r in src}
    tombs = s.tombstones()
    assert set(tombs) == deleted, (len(tombs), len(deleted))
    produced = 10_000 + counts["events"]
    wait_until(lambda: consumed(a) >= produced, timeout=60, what="apply to consume every event")
    m = metrics(a)
    got = {k: metric(m, f"outboxd_apply_events_{k}_total") for k in ("applied", "stale_ignored", "superseded")}
    record("converge 10k aggregates", events=produced, rows=len(src), deleted=len(deleted), **got)
    assert consumed(a) == produced, (consumed(a), produced)
    assert got["applied"] + got["stale_ignored"] + got["superseded"] == produced
    assert got["stale_ignored"] == 0  # nothing was replayed: no event can be stale
    assert a.stop() == 0
    s.drop()


def test_replays_and_older_versions_never_move_the_replica_backwards(harness):
    """After convergence: hand-written older versions (updates and deletes),
    duplicates, out-of-order versions of fresh aggregates, and a full replay
    by a new consumer group from the earliest offset. The replica holds the
    same rows afterwards, untouched (replicated_at too), and every such event
    is counted as stale or superseded."""
    s = Scenario(harness)
    harness.start()
    s.create(2_000)
    a = s.start_apply("g-replay-1")
    ids = [f"item-{i}" for i in range(2_000)]
    ts, counts = s.writers(400, ids, seed=5, delete_every=10)
    for t in ts:
        t.join(300)
    src = s.wait_converged()
    full_cols = REP_COLS + ", replicated_at"
    before, tombs_before = s.replica(cols=full_cols), s.tombstones()
    live = {r[0]: r[-2] for r in src}
    dead = sorted(set(ids) - set(live))
    assert len(dead) >= 10
    total = 2_000 + counts["events"]
    wait_until(lambda: consumed(a) >= total, timeout=60, what="everything consumed")
    base = {k: metric(metrics(a), f"outboxd_apply_events_{k}_total") for k in ("applied", "stale_ignored", "superseded")}

    rnd = random.Random(9)
    old = 0
    with pg() as c:
        with c.transaction():
            ins = (f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload, aggregate_version)"
                   " VALUES ('item', %s, %s, %s, %s)")
            bogus = {"name": "OLD", "country": "XX", "score": -1, "active": False, "rating": 0, "attrs": {},
                     "address": {"city": "nowhere"}, "updatedAt": "2001-01-01T00:00:00+00:00"}
            for agg in rnd.sample(sorted(live), 200):
                c.execute(ins, (agg, "ItemUpdated", json.dumps(bogus), live[agg] - 1))  # older
                c.execute(ins, (agg, "ItemUpdated", json.dumps(bogus), live[agg]))      # same version again
                old += 2
            for agg in rnd.sample(sorted(live), 50):
                c.execute(ins, (agg, "ItemDeleted", json.dumps(bogus), live[agg] - 1))  # an older delete
                old += 1
            for agg in dead[:10]:
                c.execute(ins, (agg, "ItemUpdated", json.dumps(bogus), tombs_before[agg] - 1))  # resurrection attempt
                old += 1
    # Fresh aggregates whose versions arrive newest first, in separate transactions.
    fresh = [f"fresh-{i}" for i in range(20)]
    s.create(20, prefix="fresh")
    with pg() as c:
        c.execute(f"UPDATE {s.src} SET version = 3 WHERE id LIKE 'fresh-%%'")
        for v in (3, 2, 1):
            c.execute(f"""WITH u AS (SELECT id, CASE WHEN {v} = 3 THEN name ELSE 'OLD' END AS name, country, score,
                    active, rating, attrs, city, {v} AS version, updated_at FROM {s.src} WHERE id = ANY(%s))
                {s._outbox_insert('ItemUpdated')}""", (fresh,))
    # The create above also sent version 1 of each fresh aggregate: 4 events each.
    total += old + 80
    wait_until(lambda: consumed(a) >= total, timeout=60, what="the old events consumed")
    s.wait_converged()
    after = s.replica(cols=full_cols)
    assert [r for r in after if not r[0].startswith("fresh-")] == before
    assert {k: v for k, v in s.tombstones().items()} == tombs_before
    m = metrics(a)
    delta = {k: metric(m, f"outboxd_apply_events_{k}_total") - base[k] for k in base}
    # Every hand-written old event and the older fresh versions were ignored;
    # only the fresh aggregates' newest versions (and their v1 creates, if
    # they landed in an earlier batch) were applied.
    assert delta["stale_ignored"] + delta["superseded"] >= old + 40, delta
    assert 20 <= delta["applied"] <= 40, delta
    assert a.stop() == 0

    # A second group replays the whole topic from the earliest offset.
    snap = s.replica(cols=full_cols)
    b = s.start_apply("g-replay-2")
    wait_until(lambda: consumed(b) >= total, timeout=120, what="the replay to finish")
    m = metrics(b)
    assert metric(m, "outboxd_apply_events_applied_total") == 0, m
    assert consumed(b) == total
    assert s.replica(cols=full_cols) == snap  # not even replicated_at moved
    record("replay + old versions", old_events=old, replayed=total,
           replay_stale=metric(m, "outboxd_apply_events_stale_ignored_total"),
           replay_superseded=metric(m, "outboxd_apply_events_superseded_total"))
    assert b.stop() == 0
    s.drop()


def test_replica_database_killed_mid_batch_loses_nothing_and_never_acks_ahead(harness):
    """apply's connection is terminated again and again while it is inside a
    batch transaction (a statement trigger makes each batch take 0.3 s), and
    then the whole PostgreSQL server restarts under load. Sampled while this
    goes on, the group's committed offsets never run ahead of the committed
    rows; afterwards nothing is missing."""
    s = Scenario(harness, trigger_sleep=0.3)
    harness.start()
    s.create(3_000)
    a = s.start_apply("g-kill", OUTBOXD_APPLY_BATCH_MAX=500)
    ids = [f"item-{i}" for i in range(3_000)]
    ts, counts = s.writers(1_200, ids, seed=7, pause=0.02)
    kills = 0
    samples = []
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        for i in range(10):
            time.sleep(random.uniform(0.4, 1.0))
            n = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE application_name = 'outboxd-apply' AND datname = 'replica'").fetchone()[0]
            kills += n
            if i % 3 == 2:
                samples.append(committed_offsets("g-kill", s.topic))
                samples[-1] = (samples[-1], s.replica(cols="id, source_version"), s.tombstones())
    for t in ts:
        t.join(300)
    assert counts["errors"] == 0
    # The whole server crashes under load (the relay's connection too) and
    # comes back after crash recovery.
    ts, counts2 = s.writers(400, ids, seed=8, threads=4, pause=0.01, stop_on_error=True)
    time.sleep(1.0)
    crash_pg()
    time.sleep(2)
    services("start", "pg")
    for t in ts:
        t.join(300)
    s.wait_converged(timeout=240)
    m = metrics(a)
    messages = topic_messages(s.topic)
    # Offsets sampled during the kills against the rows read right after them.
    for offsets, rows, tombs in samples:
        have = {r[0]: r[1] for r in rows}
        behind = [(p, o, k, v) for p, o, k, v in messages
                  if 0 <= o < offsets.get(p, -1) and max(have.get(k, 0), tombs.get(k, 0)) < v]
        assert not behind, f"committed offsets ahead of rows: {behind[:5]}"
    check_offsets_behind_rows(committed_offsets("g-kill", s.topic), messages, s)
    failed = metric(m, "outboxd_apply_events_failed_total")
    errors = metric(m, "outboxd_apply_db_errors_total")
    record("replica killed mid-batch", terminations=kills, db_errors=errors, events_not_written_then_reread=failed,
           offset_samples=len(samples) + 1, messages=len(messages))
    assert kills >= 5 and errors >= 3, (kills, errors, a.log()[-3000:])
    assert failed > 0, "no termination landed inside a batch"
    assert "pg_recovered" in a.log() and "reading again from offset" in a.log()
    assert a.stop() == 0
    s.drop()


def crash_pg():
    """pg_ctl stop -m immediate on the test cluster (OBX_RUN_DIR): no
    shutdown checkpoint, no goodbye to any client, crash recovery on start."""
    pgdata = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "pg")
    cmd = ["/usr/lib/postgresql/15/bin/pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _lag_over(m, seconds):
    """Applied rows with replicated_at - source_updated_at above `seconds`."""
    return metric(m, "outboxd_apply_lag_seconds_count") - metric(m, "outboxd_apply_lag_seconds_bucket", le=str(seconds))


def test_freshness_metrics_follow_the_runbook(harness):
    """The runbook's three readings, produced on purpose while a producer
    commits about 20 updates a second:
    - relay stopped: offset lag flat at 0, nothing applied, source age and
      replicated age climb (no events at all);
    - relay back: the backlog is applied with a large apply lag while the
      offset lag stays small (the producer side was late);
    - replica table locked: offset lag and ages climb together, then the
      apply lag of what waited is large (the consumer side was late)."""
    s = Scenario(harness)
    relay = harness.start()
    s.create(300)
    a = s.start_apply("g-fresh")
    s.wait_converged()
    ids = [f"item-{i}" for i in range(300)]
    stop = threading.Event()

    def trickle():
        with psycopg.connect(APP_DSN, autocommit=True) as c:
            while not stop.is_set():
                try:
                    s.update(c, random.sample(ids, 2))
                except psycopg.Error:
                    pass
                time.sleep(0.1)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(3)
        m = metrics(a)
        assert 0 <= metric(m, "outboxd_apply_source_age_seconds") < 3, m
        assert 0 <= metric(m, "outboxd_apply_replicated_age_seconds") < 3
        assert offset_lag(a) < 50
        healthy_slow = _lag_over(m, 5)

        # 1. The relay stops: no events at all.
        assert relay.stop() == 0
        time.sleep(1.5)  # what the relay flushed on its way out is applied
        count0 = metric(metrics(a), "outboxd_apply_lag_seconds_count")
        lags = []
        for _ in range(14):
            time.sleep(0.5)
            lags.append(offset_lag(a))
        m = metrics(a)
        assert max(lags) == 0, lags
        assert metric(m, "outboxd_apply_lag_seconds_count") == count0
        assert metric(m, "outboxd_apply_source_age_seconds") > 7
        assert metric(m, "outboxd_apply_replicated_age_seconds") > 7
        status = json.loads(http_get(a.port, "/status")[1])
        assert status["mode"] == "apply" and status["source_age_seconds"] > 7 and status["state"] == "streaming"

        # 2. The relay comes back: the backlog is applied late, offsets keep up.
        harness.start()
        lags = []
        deadline = time.time() + 30
        while _lag_over(metrics(a), 5) - healthy_slow < 30 and time.time() < deadline:
            lags.append(offset_lag(a))
            time.sleep(0.2)
        m = metrics(a)
        producer_late = _lag_over(m, 5) - healthy_slow
        assert producer_late >= 30, m
        wait_until(lambda: metric(metrics(a), "outboxd_apply_source_age_seconds") < 3, timeout=30,
                   what="source age back to normal")
        assert max(lags + [0]) < 150, lags

        # 3. The consumer side is stuck: the replica table is locked.
        before_lock = _lag_over(metrics(a), 5)
        with psycopg.connect(REPLICA_SUPER) as lock:
            lock.execute(f"LOCK TABLE {s.rep} IN ACCESS EXCLUSIVE MODE")
            lags = []
            for _ in range(16):
                time.sleep(0.5)
                lags.append(offset_lag(a))
            m = metrics(a)
            assert lags[-1] >= 30 and lags[-1] > lags[2], lags
            assert metric(m, "outboxd_apply_source_age_seconds") > 6
            lock.rollback()
        wait_until(lambda: offset_lag(a) == 0 or offset_lag(a) < 10, timeout=30, what="offset lag back down")
        consumer_late = _lag_over(metrics(a), 5) - before_lock
        assert consumer_late >= 30
        record("freshness readings", producer_side_late_rows=producer_late, consumer_side_late_rows=consumer_late,
               max_offset_lag_consumer_stuck=max(lags))
    finally:
        stop.set()
        t.join(10)
    assert a.stop() == 0
    s.drop()


def _rate(p, total, timeout):
    """Rows per second from the first committed batch to the last event."""
    t_first = c_first = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        c = consumed(p)
        now = time.time()
        if c and t_first is None:
            t_first, c_first = now, c
        if c >= total:
            return (c - c_first) / (now - t_first) if now > t_first else float("inf"), c
        time.sleep(0.05)
    raise AssertionError(f"only {consumed(p)} of {total} consumed")


def test_apply_rate_batched_vs_naive_row_at_a_time(harness):
    """The same backlog (15k creates, then 5k updates) applied twice into two
    replica tables: batched (one unnest upsert per batch) and naive (one
    upsert statement per event, each its own transaction). Both replicas end
    equal to the source; batched is at least twice as fast."""
    s = Scenario(harness)
    harness.start()
    s.create(15_000)
    ids = [f"item-{i}" for i in range(15_000)]
    with pg() as c:
        for i in range(50):
            s.update(c, ids[i * 100:(i + 1) * 100])
    total = 20_000
    harness.wait_confirmed(current_lsn())
    rates = {}
    for mode in ("batch", "row"):
        table = f"{s.rep}_{mode}"
        s.make_replica(table)
        p = s.start_apply(f"g-rate-{mode}", OUTBOXD_APPLY_TABLE=table, binary=BENCH_APPLY_ROW if mode == "row" else None)
        rates[mode], n = _rate(p, total, timeout=240)
        assert n == total
        s.wait_converged(table)
        assert p.stop() == 0
    record("apply rate", events=total, batched_rows_per_s=round(rates["batch"]), naive_rows_per_s=round(rates["row"]),
           speedup=round(rates["batch"] / rates["row"], 1))
    assert rates["batch"] >= 2 * rates["row"], rates
    s.drop()


def _murmur2_partition(key, partitions=3):
    """Kafka's default (Java) partitioner, which outboxd's murmur2_random matches."""
    data = key.encode()
    m, r, h = 0x5bd1e995, 24, 0x9747b28c ^ len(data)
    n4 = len(data) // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xffffffff
        k ^= k >> r
        k = (k * m) & 0xffffffff
        h = (h * m) & 0xffffffff
        h ^= k
    rest = data[4 * n4:]
    if len(rest) == 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if len(rest) >= 1:
        h ^= rest[0]
        h = (h * m) & 0xffffffff
    h ^= h >> 13
    h = (h * m) & 0xffffffff
    h ^= h >> 15
    return (h & 0x7fffffff) % partitions


def test_poison_events_halt_by_default_and_dead_letter_on_request(harness):
    """All events of this test share partition 0, so order is defined.
    halt: a payload without a mapped field stops apply (exit 3) naming topic,
    partition and offset; the events before it are applied, none after it;
    a restart stops at the same offset. dead-letter: that event, a type
    mismatch, a value the database refuses (CHECK) and an undecodable record
    go to the dead-letter topic and the rest is applied. A value the
    database refuses under halt stops with the events before it committed."""
    s = Scenario(harness, check_sql="score >= 0")
    keys = iter(k for k in (f"p-{i}" for i in range(10_000)) if _murmur2_partition(k) == 0)
    harness.start()
    good = {"name": "n", "country": "GB", "score": 1, "active": True, "rating": 1.5, "attrs": {"a": 1},
            "address": {"city": "c"}, "updatedAt": "2026-01-01T00:00:00+00:00"}

    def emit(payload, etype="ItemUpdated"):
        k = next(keys)
        with pg() as c:
            c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload, aggregate_version)"
                      " VALUES ('item', %s, %s, %s, 1)", (k, etype, json.dumps(payload)))
        return k

    g1 = emit(good)
    missing = emit({k: v for k, v in good.items() if k != "name"})
    g2 = emit(good)
    harness.wait_confirmed(current_lsn())
    msgs = {key: (p, o) for p, o, key, _ in topic_messages(s.topic)}
    assert msgs[missing][0] == 0

    def rows():
        return {r[0] for r in s.replica(cols="id")}

    for _ in range(2):  # halting is sticky
        p = s.start_apply("g-poison", wait=False)
        assert p.proc.wait(90) == 3, p.log()
        p.reader.join(5)
        log = p.log()
        assert f"topic {s.topic} partition 0 offset {msgs[missing][1]}" in log and 'no field "name"' in log, log
        assert "--to-offset %d" % (msgs[missing][1] + 1) in log
        assert rows() == {g1}
    assert committed_offsets("g-poison", s.topic)[0] == msgs[missing][1]

    refused = emit({**good, "score": -5})                 # CHECK (score >= 0): the database refuses it
    mismatch = emit({**good, "active": "yes"})            # a string for a boolean column
    harness.wait_confirmed(current_lsn())
    dlq = harness.prefix + ".dlq"
    garbage = subprocess.run(["kcat", "-P", "-b", BROKERS, "-t", s.topic, "-p", "0", "-k", "garbage"],
                             input=b"\xff\xff\xff\xff\xffnot an envelope", capture_output=True, timeout=30)
    assert garbage.returncode == 0, garbage.stderr
    g3 = emit(good)
    harness.wait_confirmed(current_lsn())
    p = s.start_apply("g-poison", OUTBOXD_APPLY_POISON_POLICY="dead-letter", OUTBOXD_APPLY_POISON_DLQ_TOPIC=dlq)
    wait_until(lambda: rows() == {g1, g2, g3}, timeout=60, what="good events applied")
    wait_until(lambda: metric(metrics(p), "outboxd_apply_events_dead_lettered_total") == 4, timeout=30,
               what="4 dead-lettered")
    out = subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", dlq, "-e", "-q", "-f", "%k\t%h\n"],
                         capture_output=True, text=True, timeout=60)
    dead = {line.split("\t")[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert set(dead) == {missing, refused, mismatch, "garbage"}, out.stdout
    assert "outboxd-original-offset=%d" % msgs[missing][1] in dead[missing]
    assert "refused" in dead[refused] and "expected a boolean" in dead[mismatch] and "undecodable" in dead["garbage"]
    assert p.stop() == 0

    # A value the database refuses, under halt: the event before it in the
    # same batch is committed, the one after is not.
    g4 = emit(good)
    refused2 = emit({**good, "score": -7})
    g5 = emit(good)
    harness.wait_confirmed(current_lsn())
    p = s.start_apply("g-poison", wait=False)
    assert p.proc.wait(90) == 3, p.log()
    p.reader.join(5)
    offset = [o for pp, o, key, _ in topic_messages(s.topic) if key == refused2][0]
    assert f"partition 0 offset {offset}" in p.log() and "refused" in p.log(), p.log()
    assert g4 in rows() and g5 not in rows()
    assert committed_offsets("g-poison", s.topic)[0] == offset
    s.drop()


def _apply_fails(env, timeout=60):
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    full.update(env)
    return subprocess.run([BIN, "apply"], env=full, capture_output=True, text=True, timeout=timeout)


def test_configuration_and_replica_table_errors_are_named(harness):
    s = Scenario(harness)
    base = s.apply_env("g-config")
    r = _apply_fails({k: v for k, v in base.items() if k != "OUTBOXD_APPLY_TABLE"})
    assert r.returncode == 2 and "apply.table" in r.stderr and "OUTBOXD_APPLY_TABLE" in r.stderr, r.stderr
    r = _apply_fails({**base, "OUTBOXD_APPLY_COLUMNS": "name"})
    assert r.returncode == 2 and "column:path" in r.stderr, r.stderr
    r = _apply_fails({**base, "OUTBOXD_APPLY_COLUMNS": MAPPING + ", nickname:nick"})
    assert r.returncode == 2 and 'no column "nickname"' in r.stderr, r.stderr
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"ALTER TABLE {s.rep} ADD COLUMN must text NOT NULL")
    r = _apply_fails(base)
    assert r.returncode == 2 and f"{s.rep}.must is NOT NULL" in r.stderr, r.stderr
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"ALTER TABLE {s.rep} DROP COLUMN must")
        c.execute(f"DROP TABLE {s.tomb}")
    r = _apply_fails(base)
    assert r.returncode == 2 and f"CREATE TABLE {s.tomb}" in r.stderr, r.stderr
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"ALTER TABLE {s.rep} DROP CONSTRAINT {s.rep}_pkey")
    r = _apply_fails({**base, "OUTBOXD_APPLY_DELETE_TYPES": ""})
    assert r.returncode == 2 and "primary key or unique index" in r.stderr, r.stderr
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"ALTER TABLE {s.rep} ADD PRIMARY KEY (id)")
        c.execute(f"REVOKE UPDATE ON {s.rep} FROM replica_writer")
    r = _apply_fails({**base, "OUTBOXD_APPLY_DELETE_TYPES": ""})
    assert r.returncode == 2 and "lacks UPDATE" in r.stderr and "GRANT" in r.stderr, r.stderr
    assert "password=replica_writer" not in r.stderr
    r = _apply_fails({**base, "OUTBOXD_APPLY_SOURCE_TIME": "updatedAt"})
    assert r.returncode == 2 and "apply.source_time" in r.stderr, r.stderr
    out = subprocess.run([BIN, "apply", "--print-config"], env={**os.environ, **base}, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "apply.conninfo = " in out.stdout, out.stderr
    assert "password=[redacted]" in out.stdout and "password=replica_writer" not in out.stdout
    s.drop()


def test_apply_names_longer_than_63_bytes_are_refused(harness):
    """PostgreSQL would cut a 66-byte name to 63 with a NOTICE and write into
    another table: apply refuses it before connecting, naming the key."""
    s = Scenario(harness)
    base = s.apply_env("g-long")
    for key, value in (("OUTBOXD_APPLY_TABLE", "t" * 66), ("OUTBOXD_APPLY_KEY_COLUMN", "k" * 64),
                       ("OUTBOXD_APPLY_COLUMNS", "c" * 64 + ":name")):
        r = _apply_fails({**base, key: value})
        name = key[len("OUTBOXD_"):].lower().replace("_", ".", 1)
        assert r.returncode == 2 and name in r.stderr and "63 bytes" in r.stderr, (key, r.stderr)
        assert "NOTICE" not in r.stderr, r.stderr
    s.drop()


# --- issue 12: errors one event causes, keys equal for the key's type, numbers ---
GOOD = {"name": "n", "country": "GB", "score": 1, "active": True, "rating": 1.5, "attrs": {"a": 1},
        "address": {"city": "c"}, "updatedAt": "2026-01-01T00:00:00+00:00"}


def _emit_raw(harness, key, payload_text, version=1, etype="ItemUpdated", agg="item"):
    """One outbox row with the payload's JSON text as given (numbers untouched)."""
    with pg() as c:
        c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload, aggregate_version)"
                  " VALUES (%s, %s, %s, %s, %s)", (agg, key, etype, payload_text, version))


def _p0_keys(prefix):
    return iter(k for k in (f"{prefix}-{i}" for i in range(100_000)) if _murmur2_partition(k) == 0)


def _dlq(topic):
    """{key: headers line} of a dead-letter topic."""
    out = subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-q", "-f", "%k\t%h\n"],
                         capture_output=True, text=True, timeout=60)
    return {line.split("\t")[0]: line for line in out.stdout.splitlines() if line.strip()}


def _isolate_case(harness, s, make_bad, sqlstate):
    """Partition 0 holds good, bad, good, good, all in one batch. halt: exit 3
    naming the bad event's offset, the event before it applied and committed,
    nothing after it. dead-letter: the good events applied, the bad one in the
    dead-letter topic, offsets committed to the end; never a reconnect loop."""
    keys = _p0_keys("iso")
    harness.start()
    g1 = next(keys)
    _emit_raw(harness, g1, json.dumps(GOOD))
    bad = make_bad(keys)
    g2, g3 = next(keys), next(keys)
    for k in (g2, g3):
        _emit_raw(harness, k, json.dumps(GOOD))
    harness.wait_confirmed(current_lsn())
    msgs = {key: o for p, o, key, _ in topic_messages(s.topic) if p == 0}
    assert set(msgs) == {g1, bad, g2, g3}
    end = max(msgs.values()) + 1

    def rows():
        return {r[0] for r in s.replica(cols="id")}

    batch = {"OUTBOXD_APPLY_BATCH_WAIT_MS": 3000}
    p = s.start_apply("g-halt", wait=False, **batch)
    assert p.proc.wait(120) == 3, p.log()
    p.reader.join(5)
    log = p.log()
    assert f"topic {s.topic} partition 0 offset {msgs[bad]}" in log and sqlstate in log, log
    assert "pg_lost" not in log, log
    assert rows() == {g1}
    assert committed_offsets("g-halt", s.topic)[0] == msgs[bad]

    dlq = harness.prefix + ".dlq"
    p = s.start_apply("g-dlq", OUTBOXD_APPLY_POISON_POLICY="dead-letter", OUTBOXD_APPLY_POISON_DLQ_TOPIC=dlq, **batch)
    wait_until(lambda: rows() == {g1, g2, g3}, timeout=60, what="good events applied")
    wait_until(lambda: committed_offsets("g-dlq", s.topic)[0] == end, timeout=30, what="offsets committed to the end")
    assert metric(metrics(p), "outboxd_apply_events_dead_lettered_total") == 1
    dead = _dlq(dlq)
    assert set(dead) == {bad} and f"outboxd-original-offset={msgs[bad]}" in dead[bad] and sqlstate in dead[bad], dead
    assert "pg_lost" not in p.log(), p.log()
    assert p.stop() == 0
    return p


def test_apply_deferred_fk_refused_at_commit_is_isolated(harness):
    """A DEFERRABLE INITIALLY DEFERRED foreign key refuses one event only at
    COMMIT (23503): the batch is not taken as applied; bisection finds the
    event, the others are applied, offsets never pass the unapplied one."""
    s = Scenario(harness)
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {s.rep}_countries CASCADE")
        c.execute(f"CREATE TABLE {s.rep}_countries (code text PRIMARY KEY)")
        c.execute(f"INSERT INTO {s.rep}_countries VALUES ('GB')")
        c.execute(f"ALTER TABLE {s.rep} ADD FOREIGN KEY (country) REFERENCES {s.rep}_countries (code)"
                  " DEFERRABLE INITIALLY DEFERRED")

    def bad(keys):
        k = next(keys)
        _emit_raw(harness, k, json.dumps({**GOOD, "country": "XX"}))
        return k

    p = _isolate_case(harness, s, bad, "23503")
    assert "SQLSTATE 23503" in p.log()
    s.drop()


@pytest.mark.parametrize("sqlstate", ["22P02", "23514", "54000"])
def test_apply_row_error_ends_in_poison_policy(harness, sqlstate):
    """22 (a string for a numeric column), 23 (a CHECK), 54000 (a key too
    long for the btree index): each is that event's poison policy, never a
    database outage (reconnect, re-read, fail, forever)."""
    s = Scenario(harness, check_sql="score >= 0")

    def bad(keys):
        if sqlstate == "54000":
            # Incompressible: the index row stays above btree's 2704 bytes.
            k = next(x for x in (os.urandom(1600).hex() for _ in range(1000)) if _murmur2_partition(x) == 0)
            payload = GOOD
        else:
            k = next(keys)
            payload = {**GOOD, "rating": "not a number"} if sqlstate == "22P02" else {**GOOD, "score": -1}
        _emit_raw(harness, k, json.dumps(payload))
        return k

    _isolate_case(harness, s, bad, sqlstate)
    s.drop()


@pytest.mark.parametrize("sqlstate", ["P0001", "XX000"])
def test_apply_any_row_error_ends_in_poison_policy(harness, sqlstate):
    """Whatever the class of the error the server answers for one row (a
    trigger raising P0001 or XX000), the batch is bisected to that event and
    its poison policy follows: never an endless pg_lost loop that blocks
    every other event. (Lock and timeout errors are the database's state,
    never poison: test_apply_locked_or_slow_replica_never_skips_an_event.)"""
    s = Scenario(harness)
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"CREATE OR REPLACE FUNCTION {s.rep}_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                  f" IF NEW.name = 'boom' THEN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = 'boom row';"
                  " END IF; RETURN NEW; END $$")
        c.execute(f"CREATE TRIGGER {s.rep}_boom BEFORE INSERT OR UPDATE ON {s.rep}"
                  f" FOR EACH ROW EXECUTE FUNCTION {s.rep}_trg()")

    def bad(keys):
        k = next(keys)
        _emit_raw(harness, k, json.dumps({**GOOD, "name": "boom"}))
        return k

    _isolate_case(harness, s, bad, sqlstate)
    s.drop()
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"DROP FUNCTION IF EXISTS {s.rep}_trg() CASCADE")


@pytest.mark.parametrize("setting, sqlstate", [("lock_timeout", "55P03"), ("statement_timeout", "57014")])
def test_apply_locked_or_slow_replica_never_skips_an_event(harness, setting, sqlstate):
    """A replica table locked (a migration, VACUUM FULL) while apply runs
    with a lock_timeout or statement_timeout: every write fails with 55P03
    or 57014 for a while. That is the database's state, not an event's: two
    processes in one group, one under halt and one under dead-letter, keep
    running, dead-letter nothing, and converge once the lock is gone."""
    s = Scenario(harness)
    harness.start()
    ids = [f"lk-{i}" for i in range(40)]
    s.create(len(ids), prefix="lk")
    conninfo = REPLICA_APPLY + f" options='-c {setting}=300'"
    dlq = harness.prefix + ".dlq"
    halt = s.start_apply("g-lock", OUTBOXD_APPLY_CONNINFO=conninfo)
    dead = s.start_apply("g-lock", OUTBOXD_APPLY_CONNINFO=conninfo, OUTBOXD_APPLY_POISON_POLICY="dead-letter",
                         OUTBOXD_APPLY_POISON_DLQ_TOPIC=dlq)
    s.wait_converged(timeout=60)
    with psycopg.connect(REPLICA_SUPER) as lock:
        lock.execute(f"LOCK TABLE {s.rep} IN ACCESS EXCLUSIVE MODE")
        with pg() as c:
            for i in range(0, len(ids), 4):
                s.update(c, ids[i:i + 4])
        wait_until(lambda: all(f"SQLSTATE {sqlstate}" in p.log() for p in (halt, dead)), timeout=30,
                   what=f"both processes meet {sqlstate}")
        time.sleep(2)
        lock.rollback()
    s.wait_converged(timeout=60)
    for p in (halt, dead):
        assert p.proc.poll() is None, p.log()
        log = p.log()
        assert "poison_event" not in log and "dead_lettered" not in log, log
        assert metric(metrics(p), "outboxd_apply_events_dead_lettered_total") == 0
        assert p.stop() == 0, p.log()
    assert _dlq(dlq) == {}
    s.drop()


def _typed_replica(table, key_type, cols):
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}, {table}_tombstones")
        c.execute(f"""CREATE TABLE {table} (id {key_type} PRIMARY KEY, {cols}, source_version bigint NOT NULL,
            source_updated_at timestamptz NOT NULL, replicated_at timestamptz NOT NULL)""")
        c.execute(f"""CREATE TABLE {table}_tombstones (id {key_type} PRIMARY KEY, source_version bigint NOT NULL,
            source_updated_at timestamptz NOT NULL, replicated_at timestamptz NOT NULL)""")
        c.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, {table}_tombstones TO replica_writer")


@pytest.mark.parametrize("key_type", ["bigint", "uuid"])
def test_apply_keys_equal_for_the_key_type_are_one_aggregate(harness, key_type):
    """"7" and "007" into a bigint key, a UUID in lower and upper case: one
    aggregate, deduplicated by the key column's type (21000 never happens),
    the newest version wins wherever it sits in the batch."""
    if key_type == "bigint":
        n = next(i for i in range(1, 100_000) if len({_murmur2_partition(f"{z}{i}") for z in ("", "0", "00")} | {0}) == 1)
        variants, canon = [str(n), f"00{n}", f"0{n}"], str(n)
    else:
        import uuid as _uuid
        u = next(x for x in (str(_uuid.uuid4()) for _ in range(100_000))
                 if len({_murmur2_partition(v) for v in (x, x.upper(), x[:8].upper() + x[8:])} | {0}) == 1)
        variants, canon = [u, u.upper(), u[:8].upper() + u[8:]], u
    s = Scenario(harness)
    table = s.rep + "_k"
    _typed_replica(table, key_type, "name text NOT NULL")
    harness.start()
    # Versions 1, 3, 2: the newest sits in the middle of the batch.
    for key, ver in zip(variants, (1, 3, 2)):
        _emit_raw(harness, key, json.dumps({"name": f"v{ver}", "updatedAt": "2026-01-01T00:00:00+00:00"}), version=ver)
    harness.wait_confirmed(current_lsn())
    msgs = topic_messages(s.topic)
    assert {p for p, _, _, _ in msgs} == {0} and len(msgs) == 3, msgs
    p = s.start_apply("g-keys", table=table, OUTBOXD_APPLY_COLUMNS="name:name", OUTBOXD_APPLY_BATCH_WAIT_MS=3000)
    wait_until(lambda: committed_offsets("g-keys", s.topic)[0] == 3, timeout=60, what="offsets committed")
    with psycopg.connect(REPLICA_SUPER) as c:
        rows = c.execute(f"SELECT id::text, name, source_version FROM {table}").fetchall()
    assert rows == [(canon, "v3", 3)], rows + [p.log()]
    log = p.log()
    assert "21000" not in log and "pg_lost" not in log and "data_error" not in log, log
    assert p.stop() == 0
    s.drop()


def test_apply_numbers_reach_postgres_as_their_original_text(harness):
    """2^63-1, 1e-30 and a 38-digit numeric, top level into bigint, numeric
    and float8 columns and nested in a jsonb column: read back exactly."""
    s = Scenario(harness)
    table = s.rep + "_n"
    _typed_replica(table, "text", "big bigint, num numeric, tiny numeric, f float8, m numeric, doc jsonb")
    harness.start()
    big, num, tiny, m = "9223372036854775807", "12345678901234567890.123456789012345678", "1e-30", "12345678901234567.89"
    doc = f'{{"big": {big}, "num": {num}, "tiny": {tiny}, "m": {m}, "l": [{big}, {num}]}}'
    payload = f'{{"big": {big}, "num": {num}, "tiny": {tiny}, "m": {m}, "doc": {doc}, "updatedAt": "2026-01-01T00:00:00Z"}}'
    _emit_raw(harness, "n1", payload)
    harness.wait_confirmed(current_lsn())
    (part, off, _, _), = topic_messages(s.topic)
    p = s.start_apply("g-num", table=table, OUTBOXD_APPLY_COLUMNS="big:big, num:num, tiny:tiny, f:tiny, m:m, doc:doc",
                      OUTBOXD_APPLY_DELETE_TYPES="")
    wait_until(lambda: committed_offsets("g-num", s.topic)[part] == off + 1, timeout=60, what="offset committed")
    with psycopg.connect(REPLICA_SUPER) as c:
        got = c.execute(f"SELECT big::text, num::text, tiny::text, f::text, m::text, doc::text, doc->>'big',"
                        f" doc->>'num', doc->'l'->>0, doc->'l'->>1, doc->>'m' FROM {table}").fetchall()
        want = c.execute("SELECT %s::bigint::text, %s::numeric::text, %s::numeric::text, %s::float8::text,"
                         " %s::numeric::text, %s::jsonb::text", (big, num, tiny, tiny, m, doc)).fetchone()
    assert got == [(*want, big, num, big, num, m)], got
    assert want[:2] == (big, num) and want[3] == "1e-30" and want[4] == m
    assert p.stop() == 0
    s.drop()


def test_apply_stops_when_the_replica_schema_changes_under_it(harness):
    """A column dropped under a running apply is no event's fault: apply stops
    with exit 2 naming the SQLSTATE, commits no offset past what it applied,
    and dead-letters nothing (the policy would otherwise empty the topic)."""
    s = Scenario(harness)
    keys = _p0_keys("schema")
    harness.start()
    g1, g2 = next(keys), next(keys)
    _emit_raw(harness, g1, json.dumps(GOOD))
    harness.wait_confirmed(current_lsn())
    dlq = harness.prefix + ".dlq"
    p = s.start_apply("g-schema", OUTBOXD_APPLY_POISON_POLICY="dead-letter", OUTBOXD_APPLY_POISON_DLQ_TOPIC=dlq)
    wait_until(lambda: {r[0] for r in s.replica(cols="id")} == {g1}, timeout=60, what="first event applied")
    wait_until(lambda: committed_offsets("g-schema", s.topic)[0] == 1, timeout=30, what="its offset committed")
    with psycopg.connect(REPLICA_SUPER, autocommit=True) as c:
        c.execute(f"ALTER TABLE {s.rep} DROP COLUMN country")
    _emit_raw(harness, g2, json.dumps(GOOD), version=2)
    assert p.proc.wait(60) == 2, p.log()
    p.reader.join(5)
    assert "replica_schema" in p.log() and "42703" in p.log(), p.log()
    assert committed_offsets("g-schema", s.topic)[0] == 1
    assert "dead_letter" not in p.log(), p.log()
    s.drop()
