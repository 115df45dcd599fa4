"""The status port, metrics, doctor and config-check, against real services."""
import json
import os
import subprocess
import tempfile
import threading
import time

from conftest import (APP_DSN, BIN, BROKERS, RELAY_DSN, current_lsn, free_port, http_get, metric, pg, services,
                      wait_until)
from loadgen import LoadGen, verify


def test_status_port_metrics_move_with_the_stream_and_the_broker(harness):
    """/metrics and /readyz during a run: source age small while events flow,
    readiness drops and source age grows while the broker is down, and both
    recover with every event delivered exactly once."""
    port = free_port()
    p = harness.start(OUTBOXD_STATUS_LISTEN=f"127.0.0.1:{port}", OUTBOXD_HEARTBEAT_INTERVAL_MS=500)
    assert http_get(port, "/healthz")[0] == 200
    wait_until(lambda: http_get(port, "/readyz")[0] == 200, what="ready")
    gen = LoadGen(APP_DSN, harness.table, seed=44, aggregates=50)
    committed = gen.run(1_000, threads=2)
    harness.wait_confirmed(current_lsn())
    code, text = http_get(port, "/metrics")
    assert code == 200
    slot = harness.slot
    assert metric(text, "outboxd_events_acked_total", slot=slot) == len(committed)
    assert metric(text, "outboxd_events_published_total", slot=slot) == len(committed)
    assert metric(text, "outboxd_inflight_events", slot=slot) == 0
    assert metric(text, "outboxd_state", slot=slot, state="streaming") == 1
    assert metric(text, "outboxd_commit_to_ack_seconds_count", slot=slot) == len(committed)
    assert 0 <= metric(text, "outboxd_source_age_seconds", slot=slot) < 5
    assert metric(text, "outboxd_kafka_brokers_up", slot=slot) >= 1
    assert metric(text, "outboxd_ready", slot=slot) == 1
    st = json.loads(http_get(port, "/status")[1])
    assert st["state"] == "streaming" and st["events"]["acked"] == len(committed) and st["ready"] is True
    # Retained WAL is polled from pg_replication_slots.
    wait_until(lambda: metric(http_get(port, "/metrics")[1], "outboxd_slot_retained_wal_bytes", slot=slot) >= 0,
               what="slot polled")
    assert metric(http_get(port, "/metrics")[1], "outboxd_slot_wal_status", slot=slot, status="reserved") == 1
    # No secrets on the port.
    assert "password" not in text and "outboxd@" not in text

    # Broker down: readiness drops, source age grows while writes go on.
    services("stop", "kafka")
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, timeout=40, what="readyz 503 with Kafka down")
        body = http_get(port, "/readyz")[1]
        assert "kafka" in body
        more = threading.Thread(target=gen.run, args=(1_600,), kwargs={"threads": 2})
        more.start()
        more.join()
        time.sleep(3)
        age = metric(http_get(port, "/metrics")[1], "outboxd_source_age_seconds", slot=slot)
        assert age > 3, age
        assert http_get(port, "/healthz")[0] == 200  # alive, just not ready
    finally:
        services("start", "kafka")
    wait_until(lambda: http_get(port, "/readyz")[0] == 200, timeout=60, what="ready again")
    harness.wait_confirmed(current_lsn(), timeout=90)
    assert metric(http_get(port, "/metrics")[1], "outboxd_source_age_seconds", slot=slot) < 5
    verify(gen.committed, harness.consume(("athlete", "bout")), harness.slot, harness.table)
    assert p.stop() == 0
    gen.drop()


def _doctor(env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    full.update(env)
    return subprocess.run([BIN, "doctor"], env=full, capture_output=True, text=True, timeout=60)


def test_doctor_passes_on_a_good_server_and_names_fixes_on_a_bad_one(harness):
    good = _doctor(harness.env())
    assert good.returncode == 0, good.stdout + good.stderr
    assert "READY: 0 failed" in good.stdout
    assert "PASS  wal_level = logical" in good.stdout
    assert "PASS  wal2json is installed and usable" in good.stdout
    assert "PASS  Kafka" in good.stdout

    bad = _doctor({**harness.env(), "OUTBOXD_PG_CONNINFO": APP_DSN, "OUTBOXD_OUTBOX_TABLE": "nope",
                   "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert bad.returncode == 1, bad.stdout
    out = bad.stdout
    assert "FAIL  role app has REPLICATION" in out and 'ALTER ROLE "app" REPLICATION' in out
    assert "FAIL  outbox table public.nope" in out and "deploy/sql/outbox.sql" in out
    assert "FAIL  Kafka 127.0.0.1:1 reachable" in out
    assert "NOT READY" in out
    assert "password=app" not in out

    gone = _doctor({**harness.env(), "OUTBOXD_PG_CONNINFO": "host=127.0.0.1 port=1 dbname=app user=x"})
    assert gone.returncode == 1 and "FAIL  connect to PostgreSQL" in gone.stdout


def test_config_check_refuses_a_key_change_without_a_new_topic(tmp_path):
    old = tmp_path / "old.conf"
    old.write_text("pg.conninfo = host=x\nkafka.bootstrap.servers = k:9092\n")
    same_topic = tmp_path / "new.conf"
    same_topic.write_text(old.read_text() + "outbox.column.aggregateid = tenant_id\n")
    r = subprocess.run([BIN, "config-check", "--previous", str(old), "--config", str(same_topic)],
                       capture_output=True, text=True)
    assert r.returncode == 5 and "outbox.column.aggregateid" in r.stderr and "topic.template" in r.stderr
    part = tmp_path / "part.conf"
    part.write_text(old.read_text() + "kafka.partitioner = consistent\n")
    r = subprocess.run([BIN, "config-check", "--previous", str(old), "--config", str(part)], capture_output=True, text=True)
    assert r.returncode == 5 and "partitioner" in r.stderr
    bumped = tmp_path / "bumped.conf"
    bumped.write_text(same_topic.read_text() + "topic.template = outbox.event.${aggregatetype}.v2\n")
    r = subprocess.run([BIN, "config-check", "--previous", str(old), "--config", str(bumped)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([BIN, "config-check", "--previous", str(old), "--config", str(old)], capture_output=True, text=True)
    assert r.returncode == 0


def test_verify_command_finds_missing_and_duplicates(harness, tmp_path):
    p = harness.start()
    with pg() as c:
        ids = [c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload, aggregate_version)"
                         f" VALUES ('athlete', 'a{i % 3}', 'U', '{{}}', {i // 3 + 1}) RETURNING id::text").fetchone()[0]
               for i in range(30)]
    harness.wait_confirmed(current_lsn())
    assert p.stop() == 0
    topic = harness.prefix + ".athlete"
    exp = tmp_path / "ids"
    exp.write_text("\n".join(ids) + "\n")
    ok = subprocess.run([BIN, "verify", "--brokers", BROKERS, "--topic", topic, "--expected", str(exp),
                         "--idle-exit-ms", "3000"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["events"] == 30 and summary["missing"] == 0 and summary["aggregates"] == 3
    exp.write_text("\n".join(ids + ["00000000-0000-0000-0000-000000000000"]) + "\n")
    bad = subprocess.run([BIN, "verify", "--brokers", BROKERS, "--topic", topic, "--expected", str(exp),
                          "--idle-exit-ms", "3000"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and '"missing":1' in bad.stdout and "missing event 00000000" in bad.stderr


def test_consume_and_verify_take_kafka_settings_from_the_config(harness, tmp_path):
    """consume and verify build their client from the config's kafka.* (so
    security settings reach them); --brokers only overrides bootstrap.servers."""
    p = harness.start()
    with pg() as c:
        ids = [c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload)"
                         f" VALUES ('athlete', 'a{i}', 'U', '{{}}') RETURNING id::text").fetchone()[0] for i in range(5)]
    harness.wait_confirmed(current_lsn())
    assert p.stop() == 0
    topic = harness.prefix + ".athlete"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    good = tmp_path / "good.conf"
    good.write_text(f"kafka.bootstrap.servers = {BROKERS}\n")
    r = subprocess.run([BIN, "consume", "--config", str(good), "--topic", topic, "--idle-exit-ms", "3000"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(l)["event_id"] for l in r.stdout.splitlines()) == sorted(ids)
    # The environment works like for every other command.
    r = subprocess.run([BIN, "verify", "--topic", topic, "--idle-exit-ms", "3000"],
                       env={**env, "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": BROKERS}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["events"] == 5, r.stdout + r.stderr
    # --brokers overrides the config's bootstrap.servers.
    dead = tmp_path / "dead.conf"
    dead.write_text("kafka.bootstrap.servers = 127.0.0.1:1\n")
    r = subprocess.run([BIN, "verify", "--config", str(dead), "--brokers", BROKERS, "--topic", topic,
                        "--idle-exit-ms", "3000"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and BROKERS in r.stderr, r.stdout + r.stderr
    # Security settings reach the client: a bad one is refused by name.
    bad = tmp_path / "bad.conf"
    bad.write_text(f"kafka.bootstrap.servers = {BROKERS}\nkafka.security.protocol = bogus\n")
    r = subprocess.run([BIN, "consume", "--config", str(bad), "--topic", topic, "--idle-exit-ms", "1000"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "kafka.security.protocol" in r.stderr, r.stderr
