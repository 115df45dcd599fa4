"""The relay fails closed (issue 11): whatever the schema, the server's
language, a vanished slot or a failover, no committed outbox row is skipped.
Each test here reproduces a way main used to lose or stall events."""
import json
import os
import signal
import subprocess
import time
import uuid

import psycopg
import pytest

from conftest import (BIN, BROKERS, PG_PORT, RELAY_DSN, ROOT, SUPER_DSN, current_lsn, invalidate_slot, pg,
                      reset_slot_keep_size, wait_until)

KAFKA_LIBS = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "kafka", "libs")


CREATE_TOPIC_JAVA = """
import java.util.*;
import org.apache.kafka.clients.admin.*;
public class CreateTopic {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", a[0]);
        try (Admin admin = Admin.create(p)) {
            admin.createTopics(List.of(new NewTopic(a[1], Integer.parseInt(a[2]), (short) 1))).all().get();
        }
    }
}
"""


def create_topic(tmp_path, name, partitions):
    """Kafka's own AdminClient from the broker's jars (no Python client here;
    Kafka 3.9's TopicCommand is in kafka-tools, which the broker lacks)."""
    src = tmp_path / "CreateTopic.java"
    src.write_text(CREATE_TOPIC_JAVA)
    cmd = ["java", "-Xmx256m", "-cp", KAFKA_LIBS + "/*", str(src), BROKERS, name, str(partitions)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def insert_events(table, n, agg="order", topic=None, dsn=None, ids=None, keys=7):
    ids = ids if ids is not None else []
    with pg(dsn) if dsn else pg() as c:
        with c.transaction():
            for i in range(n):
                eid = str(uuid.uuid4())
                c.execute(f"INSERT INTO {table} (id, aggregatetype, aggregateid, type, payload, aggregate_version, topic)"
                          " VALUES (%s, %s, %s, 'created', %s, %s, %s)",
                          (eid, agg, f"a{i % keys}", json.dumps({"n": i}), i, topic))
                ids.append(eid)
    return ids


# ---------------------------------------------------------------- partitions

PARTITIONED_DDL = """
CREATE TABLE {t} (
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregatetype     text        NOT NULL,
    aggregateid       text,
    type              text        NOT NULL,
    payload           jsonb,
    aggregate_version bigint,
    topic             text,
    headers           jsonb,
    occurred_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at)"""


@pytest.fixture
def partitioned(harness):
    leaf = f'archive."Leaf_{harness.table}_Now"'
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {harness.table}")
        c.execute("CREATE SCHEMA IF NOT EXISTS archive")
        c.execute(f"DROP TABLE IF EXISTS {leaf}, {harness.table}_late")
        c.execute(PARTITIONED_DDL.format(t=harness.table))
        # Leaves with names nothing like the parent's, one in another schema.
        c.execute("CREATE SCHEMA IF NOT EXISTS archive")
        c.execute(f"CREATE TABLE {harness.table}_past PARTITION OF {harness.table}"
                  " FOR VALUES FROM ('2000-01-01') TO ('2026-01-01')")
        c.execute(f'CREATE TABLE archive."Leaf_{harness.table}_Now" PARTITION OF {harness.table}'
                  " FOR VALUES FROM ('2026-01-01') TO ('2100-01-01')")
    yield harness
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {harness.table} CASCADE")
        c.execute(f"DROP TABLE IF EXISTS {leaf}, {harness.table}_late")


def test_partitioned_outbox_relays_every_leaf_under_the_parent(partitioned):
    h = partitioned
    p = h.start()
    ids = []
    with pg() as c:
        with c.transaction():
            for i in range(50):
                eid = str(uuid.uuid4())
                when = "2020-05-05 00:00:00+00" if i % 2 else "2030-05-05 00:00:00+00"
                c.execute(f"INSERT INTO {h.table} (id, aggregatetype, aggregateid, type, payload, aggregate_version,"
                          " occurred_at) VALUES (%s, 'order', %s, 'created', %s, %s, %s)",
                          (eid, f"a{i % 5}", json.dumps({"n": i}), i, when))
                ids.append(eid)
    h.wait_confirmed(current_lsn())
    events = h.consume(["order"])
    assert sorted(e["event_id"] for e in events) == sorted(ids)
    # The parent's identity, not the leaf's.
    assert {e["source"]["table"] for e in events} == {h.table}, {e["source"]["table"] for e in events}
    # A partition created while outboxd runs is relayed too, from its first row.
    with pg() as c:
        c.execute(f"CREATE TABLE {h.table}_late (LIKE {h.table} INCLUDING DEFAULTS)")
        c.execute(f"ALTER TABLE {h.table} DETACH PARTITION archive.\"Leaf_{h.table}_Now\"")
        c.execute(f"ALTER TABLE {h.table} ATTACH PARTITION {h.table}_late"
                  " FOR VALUES FROM ('2026-01-01') TO ('2100-01-01')")
    late = insert_events(h.table, 20, agg="late")
    h.wait_confirmed(current_lsn())
    got = h.consume(["late"])
    assert sorted(e["event_id"] for e in got) == sorted(late)
    assert p.stop() == 0


def test_doctor_checks_a_partitioned_outbox(partitioned):
    out = subprocess.run([BIN, "doctor"], env={**os.environ, **partitioned.env()}, capture_output=True, text=True,
                         timeout=120)
    assert "FAIL" not in out.stdout, out.stdout
    assert "partitioned outbox: 2 leaf partitions" in out.stdout, out.stdout


# --------------------------------------------------------- the slot vanishes

def test_vanished_slot_stops_with_exit_4_not_a_new_slot(harness):
    """Stop, commit, drop the slot, start: the relay knows (from Kafka) that
    this slot name has published, and refuses to skip what was committed."""
    p = harness.start()
    first = insert_events(harness.table, 3)
    harness.wait_confirmed(current_lsn())
    assert p.stop() == 0
    insert_events(harness.table, 2)  # committed while nobody streams
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (harness.slot,))
    p2 = harness.start(wait=False)
    assert p2.proc.wait(90) == 4, p2.log()
    p2.reader.join(5)
    log = p2.log()
    assert "snapshot" in log and "since" in log, log
    # No new slot was created behind the operator's back.
    with pg(RELAY_DSN) as c:
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                         (harness.slot,)).fetchone()[0] == 0
    # What was published before is still there, once.
    assert sorted(e["event_id"] for e in harness.consume(["order"])) == sorted(first)
    # The operator's explicit `slot create` is the way forward.
    out = subprocess.run([BIN, "slot", "create"], env={**os.environ, **harness.env()}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    p3 = harness.start()
    assert p3.stop() == 0
    # `outboxd slot drop` is the other deliberate act: it forgets the evidence,
    # so the next start creates a slot instead of stopping.
    out = subprocess.run([BIN, "slot", "drop", "--yes"], env={**os.environ, **harness.env()}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "cleared" in out.stdout, out.stdout + out.stderr
    p4 = harness.start()
    assert "slot_created" in p4.log()
    assert p4.stop() == 0


# -------------------------------------------- failover to a physical standby

PAIR_DIR = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "failover")
# Below the ephemeral port range (32768-60999): a client socket cannot hold it.
PRIMARY_PORT = int(os.environ.get("OBX_PG_FAILOVER_PORT", "31440"))
STANDBY_PORT = PRIMARY_PORT + 1


def pair(*args):
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg-standby.sh"), *args],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OBX_RUN_DIR": PAIR_DIR, "OBX_PG_PORT": str(PRIMARY_PORT)})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_failover_to_a_physical_standby_stops_with_exit_4(harness):
    pair("reset")
    try:
        dsn_p = f"host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=app password=app"
        with psycopg.connect(dsn_p, autocommit=True) as c:
            from conftest import OUTBOX_DDL
            c.execute(f"DROP TABLE IF EXISTS {harness.table}")
            c.execute(OUTBOX_DDL.format(t=harness.table))
        pair("standby")
        multi = (f"host=127.0.0.1,127.0.0.1 port={PRIMARY_PORT},{STANDBY_PORT} dbname=app user=outboxd "
                 "password=outboxd target_session_attrs=read-write")
        p = harness.start(OUTBOXD_PG_CONNINFO=multi)
        first = insert_events(harness.table, 4, dsn=dsn_p)
        with psycopg.connect(dsn_p, autocommit=True) as c:
            lsn = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        dsn_r = multi
        def confirmed():
            with psycopg.connect(dsn_r, autocommit=True) as c:
                r = c.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name=%s",
                              (lsn, harness.slot)).fetchone()
                return r and r[0]
        wait_until(confirmed, timeout=60, what="first events confirmed on the primary")
        assert p.stop() == 0
        insert_events(harness.table, 3, dsn=dsn_p)  # replicated to the standby, never streamed
        pair("promote")  # primary stops (immediate), standby becomes the primary: no slot there
        p2 = harness.start(wait=False, OUTBOXD_PG_CONNINFO=multi)
        assert p2.proc.wait(120) == 4, p2.log()
        p2.reader.join(5)
        log = p2.log()
        assert "snapshot" in log, log
        assert sorted(e["event_id"] for e in harness.consume(["order"])) == sorted(first)
    finally:
        pair("down")


# ------------------------------------------------------- a thousand topics

def test_one_transaction_routed_to_1000_topics(harness):
    """No fixed limit on topics: one transaction to 1,000 topics is delivered
    once each, also after a kill -9 that makes the read-back scan them all."""
    n = 1000
    harness.create_slot()
    topics = [f"{harness.prefix}.t{i:04d}" for i in range(n)]
    ids = []
    with pg() as c:
        with c.transaction():
            for i, t in enumerate(topics):
                eid = str(uuid.uuid4())
                c.execute(f"INSERT INTO {harness.table} (id, aggregatetype, aggregateid, type, payload, topic)"
                          " VALUES (%s, 'many', %s, 'created', '{}', %s)", (eid, f"k{i}", t))
                ids.append(eid)
    end = current_lsn()
    p = harness.start()
    # Let part of it be published, then crash before the confirmation.
    wait_until(lambda: "published" in p.log() or len(p.lines) > 3, timeout=30)
    time.sleep(1.5)
    p.stop(signal.SIGKILL)
    p2 = harness.start()
    harness.wait_confirmed(end, timeout=300)
    assert p2.stop() == 0
    assert "more than" not in p2.log()
    out = subprocess.run([BIN, "consume", "--brokers", BROKERS, "--topic", f"^{harness.prefix.replace('.', '[.]')}[.]t.*",
                          "--idle-exit-ms", "8000"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = [json.loads(l)["event_id"] for l in out.stdout.splitlines() if l.strip()]
    assert len(got) == len(set(got)), "duplicates"
    assert sorted(got) == sorted(ids)


# ------------------------------------------------- a server that speaks German

@pytest.fixture
def german_role():
    with pg(SUPER_DSN) as c:
        have = c.execute("SELECT count(*) FROM pg_collation WHERE collname ILIKE 'de_DE%'").fetchone()[0]
        c.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='outboxd_de') THEN "
                  "CREATE ROLE outboxd_de; END IF; END $$")
        c.execute("ALTER ROLE outboxd_de LOGIN REPLICATION PASSWORD 'outboxd_de'")
        c.execute("GRANT app TO outboxd_de")
        c.execute("ALTER ROLE outboxd_de SET lc_messages = 'de_DE.UTF-8'")
    yield f"host=127.0.0.1 port={PG_PORT} dbname=app user=outboxd_de password=outboxd_de"
    with pg(SUPER_DSN) as c:
        # With decoder = pgoutput the role owns the publication it created.
        c.execute("DROP OWNED BY outboxd_de")
        c.execute("DROP ROLE IF EXISTS outboxd_de")


def test_german_server_messages_standby_and_lost_slot(harness, german_role):
    dsn = german_role
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            c.execute("SELECT pg_drop_replication_slot('no_such_slot_xyz')")
        except psycopg.Error as e:
            assert "existiert nicht" in str(e), f"server does not speak German: {e}"
    a = harness.start(OUTBOXD_PG_CONNINFO=dsn)
    b = harness.start(wait=False, OUTBOXD_PG_CONNINFO=dsn, OUTBOXD_STANDBY_RETRY_MS="500")
    b.wait_for(r" standby: slot \S+ is in use", timeout=30)
    assert "reconnect" not in b.log() and "start_replication" not in b.log(), b.log()
    ids = insert_events(harness.table, 5)
    harness.wait_confirmed(current_lsn())
    a.stop(signal.SIGKILL)
    b.wait_for(r"streaming: streaming slot", timeout=60)
    more = insert_events(harness.table, 5)
    harness.wait_confirmed(current_lsn())
    assert b.stop() == 0
    assert sorted(e["event_id"] for e in harness.consume(["order"])) == sorted(ids + more)
    # Invalidated while stopped: exit 4 with the recovery, in any language.
    try:
        invalidate_slot(harness.slot, "wal_filler_de")
        p = harness.start(wait=False, OUTBOXD_PG_CONNINFO=dsn)
        assert p.proc.wait(60) == 4, p.log()
        p.reader.join(5)
        assert "reconnect" not in p.log()
    finally:
        reset_slot_keep_size()


# ------------------------------------------- read-back keeps feedback flowing

def test_readback_of_200_partitions_under_a_5s_wal_sender_timeout(harness, tmp_path):
    topic = f"{harness.prefix}.wide"
    create_topic(tmp_path, topic, 200)
    dsn = RELAY_DSN + " options='-c wal_sender_timeout=5s'"
    p = harness.start(OUTBOXD_PG_CONNINFO=dsn)
    # Distinct keys: every partition has a tail, and the restart reads back
    # nearly all 200 of them (the read-back is per partition, on first write).
    ids = insert_events(harness.table, 400, topic=topic, keys=400)
    harness.wait_confirmed(current_lsn())
    p.stop(signal.SIGKILL)
    more = insert_events(harness.table, 1000, topic=topic, keys=1000)
    p2 = harness.start(OUTBOXD_PG_CONNINFO=dsn)
    harness.wait_confirmed(current_lsn(), timeout=180)
    time.sleep(6)
    assert p2.stop() == 0
    log = p2.log()
    assert "pg_lost" not in log and "reconnect" not in log, log
    out = subprocess.run([BIN, "consume", "--brokers", BROKERS, "--topic", topic, "--idle-exit-ms", "6000"],
                         capture_output=True, text=True, timeout=300)
    got = [json.loads(l)["event_id"] for l in out.stdout.splitlines() if l.strip()]
    assert sorted(got) == sorted(ids + more)


# ------------------------------------------------- every log line is ours

def test_librdkafka_lines_go_through_the_json_logger(harness):
    """A broker nobody answers: producer and read-back consumer complain,
    through outboxd's JSON logger, never as raw %3|...| lines."""
    p = harness.start(wait=False, OUTBOXD_LOG_FORMAT="json", OUTBOXD_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
                      **{"OUTBOXD_KAFKA_RECONNECT_BACKOFF_MAX_MS": "200"})
    insert_events(harness.table, 1)
    time.sleep(8)
    p.stop()
    assert p.lines, "no log at all"
    for line in p.lines:
        assert not line.startswith("%"), line
        json.loads(line)


# ------------------------------------------- a one-million-row transaction

def test_one_million_rows_in_one_transaction_once_each(harness):
    n = 1_000_000
    harness.create_slot()
    with pg() as c:
        c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload, aggregate_version)"
                  " SELECT 'big', 'a' || (g %% 1000), 'created', jsonb_build_object('n', g), g"
                  " FROM generate_series(1, %s) g", (n,))
    end = current_lsn()
    p = harness.start()
    peak = 0
    deadline = time.time() + 600
    with pg(RELAY_DSN) as c:
        while time.time() < deadline:
            with open(f"/proc/{p.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            if c.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                         (end, harness.slot)).fetchone()[0]:
                break
            time.sleep(0.5)
    assert p.stop() == 0
    print(f"one-million-row transaction: peak RSS {peak / 1024:.1f} MiB")
    ids_path = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), f"{harness.table}.ids")
    with pg() as c, open(ids_path, "w") as f:
        for (i,) in c.execute(f"SELECT id::text FROM {harness.table}"):
            f.write(i + "\n")
    out = subprocess.run([BIN, "verify", "--brokers", BROKERS, "--topic", f"{harness.prefix}.big", "--expected",
                          ids_path, "--idle-exit-ms", "10000"], capture_output=True, text=True, timeout=900)
    os.unlink(ids_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


# --------------------------------- two servers, same database and slot names

def test_two_servers_with_the_same_names_share_a_topic_without_loss(harness):
    """Two producer clusters (shards, or an old and a new server), both with
    database app and the same slot name, write to the same topics: LSNs of
    different servers are not comparable, so the read-back must not take one
    server's records for the other's. The shared server is far ahead in WAL;
    the fresh one publishes after it, with lower positions."""
    pair("reset")
    try:
        from conftest import OUTBOX_DDL
        a = harness.start()
        ids_a = insert_events(harness.table, 10)
        harness.wait_confirmed(current_lsn())
        assert a.stop() == 0
        dsn_b = f"host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=app password=app"
        with psycopg.connect(dsn_b, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {harness.table}")
            c.execute(OUTBOX_DDL.format(t=harness.table))
        relay_b = f"host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=outboxd password=outboxd"
        b = harness.start(OUTBOXD_PG_CONNINFO=relay_b)
        ids_b = insert_events(harness.table, 10, dsn=dsn_b)
        time.sleep(4)
        assert b.stop() == 0
        assert " 0 skipped as already in Kafka" in b.log(), b.log()
        events = harness.consume(["order"])
        assert sorted(e["event_id"] for e in events) == sorted(ids_a + ids_b)
        assert len({e["source"]["system_id"] for e in events}) == 2
    finally:
        pair("down")


def test_partition_detached_while_the_relay_is_behind(partitioned):
    """Rows of a leaf, then the leaf detached while the relay still works
    through a backlog: the leaf stays in the filter until the slot is past
    the detach, so its rows arrive."""
    h = partitioned
    p = h.start()
    with pg() as c:
        c.execute(f"INSERT INTO {h.table} (aggregatetype, aggregateid, type, payload, occurred_at)"
                  " SELECT 'backlog', 'k' || (g % 100), 'created', '{}', '2020-01-01' FROM generate_series(1, 60000) g")
    ids = []
    with pg() as c:
        with c.transaction():
            for i in range(10):
                eid = str(uuid.uuid4())
                c.execute(f"INSERT INTO {h.table} (id, aggregatetype, aggregateid, type, payload, occurred_at)"
                          " VALUES (%s, 'gone', %s, 'created', '{}', '2030-01-01')", (eid, f"g{i}"))
                ids.append(eid)
        c.execute(f'ALTER TABLE {h.table} DETACH PARTITION archive."Leaf_{h.table}_Now"')
    h.wait_confirmed(current_lsn(), timeout=180)
    assert p.stop() == 0
    assert sorted(e["event_id"] for e in h.consume(["gone"])) == sorted(ids)


def test_partition_committed_behind_a_waiting_synchronous_standby(harness):
    """A transaction that creates a partition and writes to it has its commit
    in the WAL while it waits for a synchronous standby, invisible to the
    catalog: the relay must not confirm past it. Released, its rows arrive."""
    import threading
    pair("reset")
    try:
        dsn = f"host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=app password=app"
        sup = f"host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(PARTITIONED_DDL.format(t=harness.table))
            c.execute(f"CREATE TABLE {harness.table}_a PARTITION OF {harness.table} FOR VALUES FROM ('2000-01-01') TO ('2026-01-01')")
        relay = f"host=127.0.0.1 port={PRIMARY_PORT} dbname=app user=outboxd password=outboxd"
        p = harness.start(OUTBOXD_PG_CONNINFO=relay, OUTBOXD_HEARTBEAT_INTERVAL_MS="200")
        with psycopg.connect(sup, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
            c.execute("SELECT pg_reload_conf()")
        ids = [str(uuid.uuid4()) for _ in range(10)]
        pid = []

        def writer():
            with psycopg.connect(dsn, autocommit=True) as w:
                pid.append(w.execute("SELECT pg_backend_pid()").fetchone()[0])
                w.execute("SET synchronous_commit = on")
                with w.transaction():
                    w.execute(f"CREATE TABLE {harness.table}_b PARTITION OF {harness.table}"
                              " FOR VALUES FROM ('2026-01-01') TO ('2100-01-01')")
                    for eid in ids:
                        w.execute(f"INSERT INTO {harness.table} (id, aggregatetype, aggregateid, type, payload)"
                                  " VALUES (%s, 'sync', 'k', 'created', '{}')", (eid,))
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        with psycopg.connect(sup, autocommit=True) as c:
            # Its commit record is in the WAL once it waits for the standby.
            wait_until(lambda: c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                                         " AND pid = %s", (pid[0] if pid else 0,)).fetchone()[0] == 1,
                       timeout=60, what="the writer waiting for the synchronous standby")
            time.sleep(3)  # heartbeats commit behind it meanwhile
            c.execute("SELECT pg_cancel_backend(%s)", (pid[0],))  # the commit is kept locally
            c.execute("ALTER SYSTEM RESET synchronous_standby_names")
            c.execute("SELECT pg_reload_conf()")
        t.join(30)
        with psycopg.connect(sup, autocommit=True) as c:
            assert c.execute(f"SELECT count(*) FROM {harness.table}_b").fetchone()[0] == 10
            end = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            wait_until(lambda: c.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                                         " WHERE slot_name = %s", (end, harness.slot)).fetchone()[0],
                       timeout=60, what="confirmed")
        assert p.stop() == 0
        assert sorted(e["event_id"] for e in harness.consume(["sync"])) == sorted(ids), p.log()
    finally:
        pair("down")
