"""The signal table against real PostgreSQL and Kafka: a signal is data,
never SQL. Whoever may INSERT a signal row must not be able to publish
another table, break the keyset, blow up a page or crash-loop the relay;
quoted identifiers work end to end; identifiers longer than PostgreSQL's 63
bytes are refused before they reach the server."""
import json
import os
import re
import signal
import subprocess
import time

from conftest import BIN, BROKERS, OUTBOX_DDL, RELAY_DSN, SUPER_DSN, current_lsn, pg, wait_until

PAYLOAD_SQL = "jsonb_build_object('id', t.id, 'status', t.status, 'version', t.version)"
_SQL = open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "sql", "outbox.sql")).read()
_SIG = _SQL[_SQL.index("CREATE TABLE IF NOT EXISTS outboxd_signals"):]
SIGNALS_DDL = _SIG[:_SIG.index(";") + 1]


def signals_ddl(qualified):
    return SIGNALS_DDL.replace("outboxd_signals", qualified)


def make_table(name, rows):
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")
        c.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, status text NOT NULL, version bigint)")
        c.execute(f"INSERT INTO {name} SELECT 'r' || g, 'active', 1 FROM generate_series(1, {rows}) g")
        c.execute(f"ANALYZE {name}")


class Signals:
    """A test's own signal table, source table and a table of secrets."""

    def __init__(self, h, rows=500):
        self.h = h
        self.table = h.table + "_sig"
        self.src = h.table + "_src"
        self.secret = h.table + "_secret"
        make_table(self.src, rows)
        with pg() as c:
            c.execute(f"DROP TABLE IF EXISTS {self.table}, {self.secret}")
            c.execute(signals_ddl(self.table))
            c.execute(f"CREATE TABLE {self.secret} (id text PRIMARY KEY, password text, version bigint)")
            c.execute(f"INSERT INTO {self.secret} VALUES ('admin', 'hunter2', 1)")

    def env(self, **extra):
        return {"OUTBOXD_SIGNAL_TABLE": self.table, "OUTBOXD_SNAPSHOT_TABLE": self.src,
                "OUTBOXD_SNAPSHOT_PAYLOAD_SQL": PAYLOAD_SQL, "OUTBOXD_SNAPSHOT_AGGREGATE_TYPE": "athlete", **extra}

    def send(self, data, type_="snapshot"):
        with pg() as c:
            return c.execute(f"INSERT INTO {self.table}(type, data) VALUES (%s, %s) RETURNING id",
                             (type_, json.dumps(data))).fetchone()[0]

    def row(self, sid):
        with pg() as c:
            return c.execute(f"SELECT status, detail, attempts, updated_at FROM {self.table} WHERE id = %s",
                             (sid,)).fetchone()

    def wait(self, sid, *statuses, timeout=60):
        return wait_until(lambda: (lambda r: r if r[0] in statuses else None)(self.row(sid)), timeout=timeout,
                          what=f"signal {sid} {statuses}")

    def drop(self):
        with pg() as c:
            c.execute(f"DROP TABLE IF EXISTS {self.table}, {self.src}, {self.secret}")


def test_signals_carrying_sql_or_bad_values_fail_once_and_publish_nothing(harness):
    s = Signals(harness)
    x = harness.prefix + ".x"
    attacks = [
        ({"payload_sql": f"(SELECT json_agg(s) FROM {s.secret} s)", "topic": x}, '"payload_sql" is not accepted'),
        ({"where": "true) OR (true"}, '"where" is not accepted'),
        ({"columns": "password"}, '"columns" is not accepted'),
        ({"version_column": "version\" FROM secret --"}, '"version_column" is not accepted'),
        ({"page_size": 1e9}, "snapshot.page_size"),
        ({"page_size": 0}, "snapshot.page_size is not an integer in [1,"),
        ({"page_size": 2.5}, "whole number"),
        ({"page_size": "100"}, "whole number"),
        ({"rate_limit": -1}, "snapshot.rate_limit"),
        ({"table": s.secret, "topic": x}, "is not allowed for signals"),
        ({"table": f"(SELECT * FROM {s.secret})"}, "is not allowed for signals"),
        ({"topic": "x; DROP TABLE y"}, '"topic" is not accepted'),
        ({"filter": {"column": "id", "op": "= 'r1' OR true OR id =", "value": "r1"}}, "filter term 1"),
        ({"filter": {"column": "id", "op": "is null", "value": "r1"}}, "filter term 1"),
        ({"filter": {"column": "id", "op": "=", "value": ["a"]}}, "filter term 1"),
        ({"filter": {"column": "id", "op": "="}}, "filter term 1"),
        ({"filter": [{"column": "id", "op": "=", "value": str(i)} for i in range(9)]}, "1 to 8 terms"),
        ({"restart": "yes"}, "unknown or mistyped member \"restart\""),
        ({"sql": "SELECT 1"}, "unknown or mistyped member \"sql\""),
    ]
    p = harness.start(**s.env())
    ids = [(s.send(data), why) for data, why in attacks]
    for sid, why in ids:
        status, detail, attempts, _ = s.wait(sid, "failed", "done")
        assert status == "failed" and why in detail and attempts == 1, (sid, status, detail, attempts, why)
    # A quoted column that does not exist fails in the server, never as SQL.
    sid = s.send({"filter": {"column": 'id" IS NOT NULL OR "id', "op": "=", "value": "r1"}})
    status, detail, attempts, _ = s.wait(sid, "failed", "done")
    assert status == "failed" and attempts == 1, (status, detail)
    assert re.search(r"does not exist", p.log()), p.log()[-3000:]
    ids.append((sid, ""))
    harness.wait_confirmed(current_lsn())
    before = {sid: s.row(sid) for sid, _ in ids}
    assert p.stop() == 0
    assert harness.consume(["x", "athlete", s.secret, s.src], idle_ms=3000) == []

    # A restart neither retries nor re-marks them, even if a row was left
    # 'running' (as a crash mid-check would leave it): that one is checked
    # once more and fails once more, with its attempt counted.
    with pg() as c:
        c.execute(f"UPDATE {s.table} SET status = 'running' WHERE id = %s", (ids[1][0],))
    p2 = harness.start(**s.env())
    status, detail, attempts, _ = s.wait(ids[1][0], "failed")
    assert attempts == 2 and '"where" is not accepted' in detail
    time.sleep(2)
    for sid, _ in ids:
        if sid != ids[1][0]:
            assert s.row(sid) == before[sid], (sid, s.row(sid), before[sid])
    assert p2.stop() == 0
    refused = [l for l in p2.log().splitlines() if "refused" in l]
    assert len(refused) == 1 and f"signal {ids[1][0]} refused" in refused[0], refused
    assert harness.consume(["x", "athlete", s.secret, s.src], idle_ms=2000) == []
    s.drop()


def test_a_structured_filter_snapshots_exactly_the_matching_rows_once(harness):
    s = Signals(harness, rows=5_000)
    with pg() as c:
        c.execute(f"UPDATE {s.src} SET version = 2, status = 'retired' WHERE id LIKE 'r2%'")
    p = harness.start(**s.env())
    sid = s.send({"filter": [{"column": "id", "op": "like", "value": "r1%"},
                             {"column": "version", "op": ">=", "value": 1},
                             {"column": "status", "op": "is not null"}],
                  "page_size": 100, "name": harness.table + "_f", "restart": True})
    assert s.wait(sid, "done", "failed")[0] == "done", s.row(sid)
    events = harness.consume(["athlete"])
    ids = [e["aggregate_id"] for e in events]
    with pg() as c:
        want = {r[0] for r in c.execute(f"SELECT id FROM {s.src} WHERE id LIKE 'r1%'")}
    assert len(ids) == len(set(ids)) == len(want) == 1_111 and set(ids) == want
    assert all(e["event_type"] == "snapshot" for e in events)
    with pg(RELAY_DSN) as c:
        row = c.execute("SELECT filter, rows_done, status FROM outboxd_snapshots WHERE name = %s",
                        (harness.table + "_f",)).fetchone()
    assert row[1:] == (1_111, "done") and '"like"' in row[0], row

    # A value is a parameter: quotes in it match nothing, they do not widen the filter.
    sid = s.send({"filter": {"column": "id", "op": "=", "value": "x' OR 'a' = 'a"}, "name": harness.table + "_v",
                  "restart": True, "aggregate_type": "athlete2"})
    assert s.wait(sid, "done", "failed")[0] == "done", s.row(sid)
    # Numbers compare as numbers: version 2 is only on r2*.
    sid = s.send({"filter": {"column": "version", "op": ">", "value": 1}, "name": harness.table + "_n",
                  "restart": True, "aggregate_type": "athlete3", "page_size": 7})
    assert s.wait(sid, "done", "failed")[0] == "done", s.row(sid)
    assert p.stop() == 0
    assert harness.consume(["athlete2"], idle_ms=2000) == []
    got = [e["aggregate_id"] for e in harness.consume(["athlete3"])]
    assert sorted(got) == sorted(f"r{n}" for n in range(1, 5_001) if str(n).startswith("2"))
    s.drop()


def test_a_signal_that_keeps_stopping_the_relay_gives_up_after_3_attempts(harness):
    """kill -9 during the snapshot three times: the fourth start marks the
    signal failed instead of crash-looping; a clean stop is no attempt."""
    s = Signals(harness, rows=20_000)
    env = s.env(OUTBOXD_SNAPSHOT_RATE_LIMIT="500")
    p = harness.start(**env)
    sid = s.send({"page_size": 100, "name": harness.table + "_c", "restart": True})
    wait_until(lambda: s.row(sid)[:1] == ("running",), what="running")
    assert p.stop() == 0
    assert s.row(sid)[0] == "interrupted" and s.row(sid)[2] == 0, s.row(sid)
    for attempt in (1, 2, 3):
        p = harness.start(**env)
        p.wait_for(f"resuming the snapshot of signal {sid}")
        wait_until(lambda: s.row(sid)[:3:2] == ("running", attempt), what=f"attempt {attempt}")
        time.sleep(0.5)
        p.stop(signal.SIGKILL)
    p = harness.start(**env)
    status, detail, attempts, at = s.wait(sid, "failed")
    assert "gave up after 3 attempts" in detail and attempts == 3, (detail, attempts)
    assert "resuming" not in p.log() and f"signal {sid}: gave up after 3 attempts" in p.log()
    assert p.stop() == 0
    p = harness.start(**env)
    time.sleep(1)
    assert p.stop() == 0
    assert s.row(sid) == (status, detail, attempts, at)
    assert "resuming" not in p.log() and "gave up" not in p.log()
    s.drop()


def test_a_signal_naming_a_topic_fails_once_and_publishes_nothing(harness):
    """The topic comes from the configuration, like the payload: a signal
    that names one (outboxd's own outboxd.slots, another service's live
    topic) is marked failed once and publishes nothing anywhere."""
    s = Signals(harness, rows=50)
    live = harness.prefix + ".other"
    p = harness.start(**s.env())
    slots = harness.prefix + ".slots"  # this relay's slot evidence topic (outboxd.slots by default)
    ids = [s.send({"table": s.src, "name": harness.table + "_t1", "topic": slots}),
           s.send({"name": harness.table + "_t2", "topic": live, "page_size": 5})]
    for sid in ids:
        status, detail, attempts, _ = s.wait(sid, "failed", "done")
        assert status == "failed" and '"topic" is not accepted' in detail and attempts == 1, (status, detail)
    harness.wait_confirmed(current_lsn())
    assert p.stop() == 0
    assert harness.consume(["other", "athlete"], idle_ms=3000) == []
    out = subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", slots, "-e", "-q", "-f", "%k\n"],
                         capture_output=True, text=True, timeout=60)
    assert "r1" not in out.stdout.split(), out.stdout[-2000:]
    s.drop()


def _doctor(env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    full.update(env)
    return subprocess.run([BIN, "doctor"], env=full, capture_output=True, text=True, timeout=60)


def test_doctor_warns_when_roles_other_than_the_owner_may_insert_signals(harness):
    sig = harness.table + "_sig"
    with pg(SUPER_DSN) as c:
        c.execute(f"DROP TABLE IF EXISTS {sig}")
        c.execute(signals_ddl(sig))
        c.execute(f"REVOKE ALL ON {sig} FROM PUBLIC")
    env = {**harness.env(), "OUTBOXD_SIGNAL_TABLE": sig}
    out = _doctor(env).stdout
    assert f'PASS  signal table "public"."{sig}": only its owner postgres (and superusers) may INSERT' in out, out
    with pg(SUPER_DSN) as c:
        c.execute(f"GRANT INSERT ON {sig} TO app")
    r = _doctor(env)
    assert r.returncode == 0, r.stdout
    assert f'WARN  signal table "public"."{sig}": roles other than its owner postgres may INSERT (app' in r.stdout
    assert f'REVOKE INSERT ON "public"."{sig}" FROM app' in r.stdout
    # outboxd is a member of app (deploy/postgres/init.sql): it inherits the grant and is named too.
    assert re.search(r"may INSERT \(app, outboxd[,)]", r.stdout), r.stdout
    with pg(SUPER_DSN) as c:
        c.execute(f"DROP TABLE {sig}")


def test_quoted_identifiers_schema_outbox_signal_and_source_tables(harness):
    """Schema "Sales-EU", outbox "Outbox", signal table "Signals", source
    "Sales-EU"."Athletes": the relay relays, a signal snapshot and the
    snapshot command work."""
    with pg() as c:
        c.execute('DROP SCHEMA IF EXISTS "Sales-EU" CASCADE')
        c.execute('CREATE SCHEMA "Sales-EU"')
        c.execute(OUTBOX_DDL.format(t='"Sales-EU"."Outbox"'))
        c.execute(signals_ddl('"Sales-EU"."Signals"'))
        c.execute('CREATE TABLE "Sales-EU"."Athletes" (id text PRIMARY KEY, status text NOT NULL, version bigint)')
        c.execute('INSERT INTO "Sales-EU"."Athletes" SELECT \'r\' || g, \'active\', 1 FROM generate_series(1, 300) g')
    env = {"OUTBOXD_OUTBOX_SCHEMA": "Sales-EU", "OUTBOXD_OUTBOX_TABLE": "Outbox", "OUTBOXD_SIGNAL_TABLE": "Signals",
           "OUTBOXD_SNAPSHOT_TABLE": '"Sales-EU"."Athletes"', "OUTBOXD_SNAPSHOT_PAYLOAD_SQL": PAYLOAD_SQL,
           "OUTBOXD_SNAPSHOT_AGGREGATE_TYPE": "athlete"}
    p = harness.start(**env)
    with pg() as c:
        for i in range(5):
            c.execute('INSERT INTO "Sales-EU"."Outbox"(aggregatetype, aggregateid, type, payload, aggregate_version)'
                      " VALUES ('live', %s, 'Created', '{}', 1)", (f"a{i}",))
        sid = c.execute('INSERT INTO "Sales-EU"."Signals"(type, data) VALUES (\'snapshot\', %s) RETURNING id',
                        (json.dumps({"name": harness.table + "_q", "restart": True, "page_size": 64,
                                     "filter": {"column": "id", "op": "like", "value": "r1%"}}),)).fetchone()[0]
        wait_until(lambda: c.execute('SELECT status FROM "Sales-EU"."Signals" WHERE id = %s', (sid,)).fetchone()[0]
                   in ("done", "failed"), timeout=60, what="signal finished")
        row = c.execute('SELECT status, detail FROM "Sales-EU"."Signals" WHERE id = %s', (sid,)).fetchone()
    assert row == ("done", None), (row, p.log()[-3000:])
    harness.wait_confirmed(current_lsn())
    assert p.stop() == 0
    live = harness.consume(["live"])
    assert sorted(e["aggregate_id"] for e in live) == [f"a{i}" for i in range(5)]
    assert {(e["source"]["schema"], e["source"]["table"]) for e in live} == {("Sales-EU", "Outbox")}
    snap = harness.consume(["athlete"])
    assert len(snap) == 111 and {e["aggregate_id"] for e in snap} == {"r1"} | {f"r1{i}" for i in range(10)} | \
        {f"r1{i}{j}" for i in range(10) for j in range(10)}

    r = subprocess.run([BIN, "snapshot", "--table", '"Sales-EU"."Athletes"', "--name", harness.table + "_cli",
                        "--restart", "--set", "snapshot.aggregate_type=athlete_cli"],
                       env={**os.environ, **harness.env(**env)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(harness.consume(["athlete_cli"])) == 300
    with pg(RELAY_DSN) as c:
        assert c.execute('SELECT status, rows_done FROM "Sales-EU".outboxd_snapshots WHERE name = %s',
                         (harness.table + "_cli",)).fetchone() == ("done", 300)
    with pg() as c:
        c.execute('DROP SCHEMA "Sales-EU" CASCADE')


def test_slot_name_of_63_bytes_works_and_64_is_refused_naming_the_key(harness):
    ok, long = "s" * 63, "s" * 64
    env = {"OUTBOXD_SLOT_NAME": ok}
    try:
        p = harness.start(**env)
        with pg() as c:
            c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload)"
                      " VALUES ('slot63', 'a', 'Created', '{}')")
        assert [e["aggregate_id"] for e in harness.consume(["slot63"])] == ["a"]
        assert p.stop() == 0
        with pg(RELAY_DSN) as c:
            assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (ok,)).fetchone()[0] == 1
        bad = subprocess.run([BIN, "run"], env={**os.environ, **harness.env(OUTBOXD_SLOT_NAME=long)},
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2, bad.stderr[-2000:]
        assert "slot.name" in bad.stderr and "64 bytes" in bad.stderr and "63 bytes" in bad.stderr, bad.stderr
        with pg(RELAY_DSN) as c:
            assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'ssss%%' AND"
                             " length(slot_name) <> 63").fetchone()[0] == 0
    finally:
        with pg(RELAY_DSN) as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"
                      " AND NOT active", (ok,))
