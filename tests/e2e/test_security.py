"""Secured clusters, for real (docs/security.md "What the tests prove"):
Kafka over SASL_SSL with SCRAM-SHA-512 and over SSL with client
certificates, PostgreSQL over sslmode=verify-full with a SCRAM password
(scripts/kafka.sh, scripts/pg.sh, certificates from scripts/tls.sh). Every
Kafka client outboxd makes and both PostgreSQL sides run over them; every
refusal (password, CA, expired or mismatched certificate) ends with exit 2,
names what failed and the keys to fix, after a bounded retry, and prints
no secret."""
import concurrent.futures
import json
import os
import signal
import subprocess
import time

import psycopg
import pytest

from conftest import APP_DSN, BIN, BROKERS, PG_PORT, Outboxd, current_lsn, pg, wait_until
from loadgen import LoadGen, verify

TLS = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "tls")
CA, OTHER_CA = os.path.join(TLS, "ca.crt"), os.path.join(TLS, "other-ca.crt")
SASL_PORT = os.environ.get("OBX_KAFKA_SASL_PORT", "9096")
SSL_PORT = os.environ.get("OBX_KAFKA_SSL_PORT", "9097")
BADCERT_PORT = os.environ.get("OBX_KAFKA_BADCERT_PORT", "9098")
# Test credentials made by scripts/kafka.sh and scripts/pg.sh.
SCRAM_PW = "obx-scram-test"
PG_PW = "obx-pg-scram-test"
WRONG_PW = "wrong-secret-8d1f"

SASL = {"OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{SASL_PORT}", "OUTBOXD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "OUTBOXD_KAFKA_SASL_MECHANISMS": "SCRAM-SHA-512", "OUTBOXD_KAFKA_SASL_USERNAME": "outboxd",
        "OUTBOXD_KAFKA_SASL_PASSWORD": SCRAM_PW, "OUTBOXD_KAFKA_SSL_CA_LOCATION": CA}


def mtls(cert="client"):
    return {"OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{SSL_PORT}", "OUTBOXD_KAFKA_SECURITY_PROTOCOL": "SSL",
            "OUTBOXD_KAFKA_SSL_CA_LOCATION": CA,
            "OUTBOXD_KAFKA_SSL_CERTIFICATE_LOCATION": os.path.join(TLS, cert + ".crt"),
            "OUTBOXD_KAFKA_SSL_KEY_LOCATION": os.path.join(TLS, cert + ".key")}


def pg_tls(host="host=127.0.0.1", root=CA, db="app"):
    return f"{host} port={PG_PORT} dbname={db} user=outboxd_tls sslmode=verify-full sslrootcert={root}"


# The relay and apply log in as outboxd_tls: TLS + SCRAM only (pg_hba).
PG_SECURE = {"OUTBOXD_PG_CONNINFO": pg_tls(), "PGPASSWORD": PG_PW}


def run(harness, args, env, timeout=60):
    full = {**os.environ, **harness.env(), **env}
    t = time.monotonic()
    r = subprocess.run([BIN, *args], env=full, capture_output=True, text=True, timeout=timeout)
    r.elapsed = time.monotonic() - t
    r.out = r.stdout + r.stderr
    return r


def parallel(harness, jobs):
    """{name: (args, env)} -> {name: result}, all at once."""
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        futs = {k: ex.submit(run, harness, args, env) for k, (args, env) in jobs.items()}
        return {k: f.result() for k, f in futs.items()}


def consume(harness, kafka, topic, idle_ms=3000):
    r = run(harness, ["consume", "--topic", topic, "--idle-exit-ms", str(idle_ms)], kafka)
    assert r.returncode == 0, r.out
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def tls_sessions(user="outboxd_tls"):
    """ssl flags of every backend of user (walsenders included)."""
    with pg(f"host=127.0.0.1 port={PG_PORT} dbname=app user=postgres") as c:
        return [r[0] for r in c.execute("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                                        " WHERE a.usename = %s", (user,)).fetchall()]


def no_secret(text):
    for s in (SCRAM_PW, PG_PW, WRONG_PW, "obx-test-store"):
        assert s not in text, f"secret {s!r} printed:\n{text}"


# --- every client over the secured stack -----------------------------------

@pytest.mark.parametrize("kafka", ["sasl_ssl", "mtls"])
def test_relay_kill9_exactly_once_over_tls(harness, tmp_path, kafka):
    """The relay over SASL_SSL (or mTLS) and PostgreSQL verify-full + SCRAM:
    kill -9 mid-stream, restart; the exactly-once read-back consumer (and the
    evidence clients) run over the same listener: every committed event
    arrives once with exact fields. consume and verify read it back there."""
    k = SASL if kafka == "sasl_ssl" else mtls()
    gen = LoadGen(APP_DSN, harness.table, seed=61, aggregates=40)
    first = harness.start(**k, **PG_SECURE)
    assert tls_sessions() and all(tls_sessions()), tls_sessions()
    gen.run(600, threads=3)
    first.stop(signal.SIGKILL)
    gen.run(600, threads=3)
    second = harness.start(**k, **PG_SECURE)
    gen.run(300, threads=3)
    harness.wait_confirmed(current_lsn())
    topics = ",".join(f"{harness.prefix}.{t}" for t in ("athlete", "bout"))
    events = consume(harness, k, topics)
    summary = verify(gen.committed, events, harness.slot, harness.table, exactly_once=True)
    assert summary["received"] == len(gen.committed) and summary["duplicates"] == 0
    assert second.stop() == 0
    ids = tmp_path / "ids"
    ids.write_text("\n".join(e["event_id"] for e in events if e["aggregate_type"] == "athlete") + "\n")
    v = run(harness, ["verify", "--topic", f"{harness.prefix}.athlete", "--expected", str(ids),
                      "--idle-exit-ms", "3000"], k)
    assert v.returncode == 0 and '"missing":0' in v.stdout, v.out
    no_secret(first.log() + second.log() + v.out)
    gen.drop()


def test_snapshot_doctor_and_apply_with_dead_letter_over_tls(harness):
    """snapshot's producer (mTLS), doctor (SASL_SSL, verify-full PG), and
    apply's consumer and dead-letter producer (SASL_SSL, replica written
    over verify-full + SCRAM)."""
    src, rep = "sec_src_" + harness.name[:30], "sec_rep_" + harness.name[:30]
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {src}, {rep}")
        c.execute(f"CREATE TABLE {src} (id text PRIMARY KEY, name text NOT NULL, version bigint NOT NULL DEFAULT 1)")
        c.execute(f"INSERT INTO {src} SELECT 's' || i, 'name ' || i FROM generate_series(1, 50) i")
        c.execute(f"CREATE TABLE {rep} (id text PRIMARY KEY, name text NOT NULL, source_version bigint NOT NULL,"
                  " source_updated_at timestamptz NOT NULL, replicated_at timestamptz NOT NULL)")
    try:
        snap = run(harness, ["snapshot", "--table", src, "--set", "snapshot.aggregate_type=snap"], {**mtls(), **PG_SECURE})
        assert snap.returncode == 0, snap.out
        events = consume(harness, mtls(), harness.prefix + ".snap")
        assert sorted(e["aggregate_id"] for e in events) == sorted(f"s{i}" for i in range(1, 51))
        assert all(json.loads(e["payload"])["name"] == "name " + e["aggregate_id"][1:] for e in events)

        doc = run(harness, ["doctor"], {**SASL, **PG_SECURE})
        assert doc.returncode == 0 and "READY" in doc.stdout, doc.out

        harness.start(**SASL, **PG_SECURE)
        with pg() as c:
            for i, payload in enumerate(({"name": "a", "updatedAt": "2026-01-01T00:00:00+00:00"},
                                         {"nope": 1, "updatedAt": "2026-01-01T00:00:00+00:00"},
                                         {"name": "b", "updatedAt": "2026-01-01T00:00:00+00:00"})):
                c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload, aggregate_version)"
                          " VALUES ('item', %s, 'ItemUpdated', %s, 1)", (f"k{i}", json.dumps(payload)))
        harness.wait_confirmed(current_lsn())
        dlq = harness.prefix + ".dlq"
        apply_env = {**SASL, "OUTBOXD_APPLY_CONNINFO": pg_tls(), "PGPASSWORD": PG_PW,
                     "OUTBOXD_APPLY_TOPICS": harness.prefix + ".item", "OUTBOXD_APPLY_GROUP": harness.prefix + ".g",
                     "OUTBOXD_APPLY_TABLE": rep, "OUTBOXD_APPLY_KEY_COLUMN": "id", "OUTBOXD_APPLY_COLUMNS": "name:name",
                     "OUTBOXD_APPLY_SOURCE_TIME": "payload:updatedAt",
                     "OUTBOXD_APPLY_POISON_POLICY": "dead-letter", "OUTBOXD_APPLY_POISON_DLQ_TOPIC": dlq}
        a = Outboxd({**harness.env(), **apply_env}, args=("apply",))
        harness.procs.append(a)

        def rows():
            with pg() as c:
                return dict(c.execute(f"SELECT id, name FROM {rep}").fetchall())
        wait_until(lambda: rows() == {"k0": "a", "k2": "b"}, timeout=60, what="apply over TLS")
        dead = wait_until(lambda: consume(harness, SASL, dlq, idle_ms=1500), timeout=30, what="dead letter")
        assert [e["aggregate_id"] for e in dead] == ["k1"], dead
        assert all(tls_sessions()), tls_sessions()
        assert a.stop() == 0, a.log()
        no_secret(snap.out + doc.out + a.log())
    finally:
        with pg() as c:
            c.execute(f"DROP TABLE IF EXISTS {src}, {rep}")


# --- refusals: exit 2, named, bounded, no secret ---------------------------

KAFKA_REFUSALS = {
    "wrong_sasl_password": ({**SASL, "OUTBOXD_KAFKA_SASL_PASSWORD": WRONG_PW}, "_AUTHENTICATION",
                            "kafka.sasl.password"),
    "unknown_ca": ({**SASL, "OUTBOXD_KAFKA_SSL_CA_LOCATION": OTHER_CA}, "_SSL", "kafka.ssl.ca.location"),
    "mismatched_host_cert": ({**mtls(), "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{BADCERT_PORT}"}, "_SSL",
                             "name the hosts"),
}


def test_kafka_refusals_are_config_errors(harness):
    """Wrong SASL password, unknown CA, broker certificate for another host
    (all cases at once, to keep the file fast): the relay takes the refusal
    twice (librdkafka reconnects in between), then exits 2 naming the
    librdkafka code and the kafka.* keys; consume exits 2 (never 0 with "no
    events"); doctor names the fix. Decided from
    RD_KAFKA_RESP_ERR__AUTHENTICATION / __SSL, never from message text."""
    jobs = {}
    for case, (env, code, fix) in KAFKA_REFUSALS.items():
        jobs[case, "run"] = (["run"], {**env, **PG_SECURE, "OUTBOXD_SLOT_NAME": f"{harness.slot}_{case}"[:60]})
        jobs[case, "doctor"] = (["doctor"], {**env, **PG_SECURE})
        jobs[case, "consume"] = (["consume", "--topic", harness.prefix + ".x", "--idle-exit-ms", "2000"], env)
    res = parallel(harness, jobs)
    for case, (env, code, fix) in KAFKA_REFUSALS.items():
        r, doc, c = res[case, "run"], res[case, "doctor"], res[case, "consume"]
        assert r.returncode == 2, (case, r.out)
        assert code in r.out and fix in r.out and "kafka_security" in r.out, (case, r.out)
        assert r.out.count(f"kafka_error: {code}:") >= 2 and r.elapsed < 40, (case, r.elapsed, r.out)
        assert c.returncode == 2 and code in c.out, (case, c.out)
        assert doc.returncode == 1 and code in doc.stdout and fix in doc.stdout, (case, doc.out)
        no_secret(r.out + doc.out + c.out)


def test_expired_client_certificate_is_refused_before_connecting(harness):
    """An expired client certificate: exit 2 at once, naming the key, for
    the relay and consume; doctor names it too."""
    env = mtls("expired-client")
    for args in (["run"], ["consume", "--topic", "x", "--idle-exit-ms", "2000"]):
        r = run(harness, args, {**env, **PG_SECURE})
        assert r.returncode == 2, r.out
        assert "kafka.ssl.certificate.location" in r.out and "expired" in r.out, r.out
        assert r.elapsed < 10, r.elapsed
    doc = run(harness, ["doctor"], {**env, **PG_SECURE})
    assert doc.returncode == 1 and "expired" in doc.stdout, doc.out


PG_REFUSALS = {
    "wrong_password": ({"PGPASSWORD": WRONG_PW}, "PostgreSQL authentication failed"),
    "unknown_ca": ({"OUTBOXD_PG_CONNINFO": pg_tls(root=OTHER_CA)}, "TLS with PostgreSQL failed"),
    "mismatched_host": ({"OUTBOXD_PG_CONNINFO": pg_tls(host="host=wrong.example hostaddr=127.0.0.1")},
                        "TLS with PostgreSQL failed"),
}


def test_pg_refusals_are_config_errors(harness):
    """Wrong password, unknown CA, certificate not naming the host (all at
    once): the relay (and apply, for the password) tries twice more (0.5 s,
    1 s), then exits 2 naming what failed and what to check; doctor names
    the fix. libpq has no SQLSTATE for a failed connection: the class comes
    from PQconnectionUsedPassword and the state a failed handshake was in."""
    jobs = {}
    for case, (extra, what) in PG_REFUSALS.items():
        env = {**SASL, **PG_SECURE, **extra}
        jobs[case, "run"] = (["run"], env)
        jobs[case, "doctor"] = (["doctor"], env)
        jobs[case, "apply"] = (["apply"], {**env, "OUTBOXD_APPLY_CONNINFO": env["OUTBOXD_PG_CONNINFO"],
                                           "OUTBOXD_APPLY_TOPICS": "x", "OUTBOXD_APPLY_GROUP": "g",
                                           "OUTBOXD_APPLY_TABLE": "t", "OUTBOXD_APPLY_KEY_COLUMN": "id",
                                           "OUTBOXD_APPLY_COLUMNS": "name:name"})
    res = parallel(harness, jobs)
    for case, (extra, what) in PG_REFUSALS.items():
        r, doc, a = res[case, "run"], res[case, "doctor"], res[case, "apply"]
        assert r.returncode == 2 and what in r.out, (case, r.out)
        assert 1.4 <= r.elapsed < 20, (case, r.elapsed)
        assert a.returncode == 2 and what in a.out, (case, a.out)
        assert doc.returncode == 1 and what in doc.stdout and "check" in doc.stdout, (case, doc.out)
        no_secret(r.out + doc.out + a.out)


def test_plain_connection_refused_for_tls_role_and_network_errors_retried(harness):
    """pg_hba refuses outboxd_tls without TLS; an unreachable broker or
    server is a network error: retried (still running after 5 s), not exit 2."""
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={PG_PORT} dbname=app user=outboxd_tls password={PG_PW}"
                        " sslmode=disable").close()
    procs = []
    for env in ({**SASL, "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **PG_SECURE},
                {**SASL, "OUTBOXD_PG_CONNINFO": pg_tls().replace(f"port={PG_PORT}", "port=1"), "PGPASSWORD": PG_PW}):
        full = {**os.environ, **harness.env(), **env}
        procs.append(subprocess.Popen([BIN, "run"], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    time.sleep(5)
    for p in procs:
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, out + err
        assert "retrying" in err or "reconnect" in err, err
        no_secret(out + err)


# --- refusals the first version missed (FINDINGS.md) ------------------------

def scram_user(name, password=None):
    """Sets (or, without password, deletes) a SCRAM-SHA-512 user with Kafka's
    ConfigCommand from the jars scripts/kafka.sh runs, over PLAINTEXT."""
    libs = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "kafka", "libs")
    change = (["--add-config", f"SCRAM-SHA-512=[password={password}]"] if password
              else ["--delete-config", "SCRAM-SHA-512"])
    subprocess.run(["java", "-Xmx256m", "-cp", f"{libs}/*", "kafka.admin.ConfigCommand", "--bootstrap-server",
                    BROKERS, "--alter", *change, "--entity-type", "users", "--entity-name", name],
                   check=True, capture_output=True, timeout=60)


def test_refusal_mid_session_ends_the_relay(harness):
    """The relay's Kafka user is removed (a password rotated on the cluster)
    while it streams. Kafka keeps connections authenticated before the
    change, so librdkafka closes idle ones after 1 s here; the next event
    needs a new connection, which is refused, and the relay exits 2 naming
    the keys, in seconds, not after an ack that never comes (exactly_once
    waits for acks forever). No broker restart: Kafka 3.9 KRaft may fail
    altered SCRAM credentials after one, for the rest of the suite."""
    user, pw = "rot-" + harness.prefix.rsplit(".", 1)[1], "rotating-secret-5e2a"
    scram_user(user, pw)
    env = {**SASL, "OUTBOXD_KAFKA_SASL_USERNAME": user, "OUTBOXD_KAFKA_SASL_PASSWORD": pw,
           "OUTBOXD_KAFKA_CONNECTIONS_MAX_IDLE_MS": "1000"}
    insert = (f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload)"
              " VALUES ('athlete', %s, 'U', '{}')")
    try:
        relay = harness.start(**env, **PG_SECURE)
        with pg() as c:
            c.execute(insert, ("a1",))
        harness.wait_confirmed(current_lsn())
        scram_user(user)
        time.sleep(3)  # idle connections closed, the removal applied
        with pg() as c:
            c.execute(insert, ("a2",))
        t = time.monotonic()
        assert relay.proc.wait(40) == 2, relay.log()
        assert time.monotonic() - t < 30
        log = relay.log()
        assert "kafka_security" in log and "_AUTHENTICATION" in log and "kafka.sasl.password" in log, log
        no_secret(log)
        assert pw not in log
    finally:
        try:
            scram_user(user)
        except subprocess.CalledProcessError:
            pass  # already gone


def test_one_shot_readers_never_report_an_unreached_cluster_as_empty(harness):
    """consume --idle-exit-ms and verify against a cluster they never
    reached: a refusal is exit 2 naming the keys (verify too, with its
    summary), anything else exit 1 "cannot reach Kafka"; never exit 0 with
    no events. The brokers' refusal of a client certificate arrives as a
    transport error (TLS 1.3 alert), so it is the second kind. An empty
    topic on a reachable cluster stays exit 0."""
    topic = harness.prefix + ".none"
    idle = ["--topic", topic, "--idle-exit-ms", "1500"]
    refused = {"wrong_password": {**SASL, "OUTBOXD_KAFKA_SASL_PASSWORD": WRONG_PW},
               "unknown_ca": {**SASL, "OUTBOXD_KAFKA_SSL_CA_LOCATION": OTHER_CA}}
    unreached = {"closed_port": {"OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
                 "plaintext_to_sasl_ssl": {**SASL, "OUTBOXD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
                 "mtls_without_client_cert": {k: v for k, v in mtls().items() if "CERTIFICATE" not in k
                                              and "KEY" not in k}}
    jobs = {("empty", "consume"): (["consume", *idle], SASL)}
    for case, env in {**refused, **unreached}.items():
        jobs[case, "consume"] = (["consume", *idle], env)
        jobs[case, "verify"] = (["verify", *idle], env)
    res = parallel(harness, jobs)
    assert res["empty", "consume"].returncode == 0 and res["empty", "consume"].stdout == "", res["empty", "consume"].out
    for case in refused:
        for tool in ("consume", "verify"):
            r = res[case, tool]
            assert r.returncode == 2 and "kafka.s" in r.out, (case, tool, r.out)
        assert '"ok":false' in res[case, "verify"].stdout, res[case, "verify"].out
    for case in unreached:
        for tool in ("consume", "verify"):
            r = res[case, tool]
            assert r.returncode == 1 and "cannot reach Kafka" in r.out, (case, tool, r.out)
    no_secret("".join(r.out for r in res.values()))


def test_expired_client_certificate_as_pem_text_is_refused_before_connecting(harness):
    """kafka.ssl.certificate.pem (PEM text, e.g. from a Secret as an
    environment variable) is checked like a file: exit 2 at once, naming
    the key."""
    with open(os.path.join(TLS, "expired-client.crt")) as c, open(os.path.join(TLS, "expired-client.key")) as k:
        env = {**{x: v for x, v in mtls().items() if "CERTIFICATE" not in x and "SSL_KEY" not in x},
               "OUTBOXD_KAFKA_SSL_CERTIFICATE_PEM": c.read(), "OUTBOXD_KAFKA_SSL_KEY_PEM": k.read()}
    for args in (["run"], ["consume", "--topic", "x", "--idle-exit-ms", "2000"]):
        r = run(harness, args, {**env, **PG_SECURE})
        assert r.returncode == 2 and "kafka.ssl.certificate.pem" in r.out and "expired" in r.out, r.out
        assert r.elapsed < 10 and "PRIVATE KEY" not in r.out, r.out


def test_doctor_warns_when_conninfo_weakens_pgsslmode(harness):
    """A keyword beats PGSSLMODE: sslmode=require in pg.conninfo undoes the
    Kubernetes component's PGSSLMODE=verify-full. doctor says so (WARN,
    naming both), and is quiet about TLS when verify-full is what ran."""
    env = {**SASL, "PGPASSWORD": PG_PW, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": CA}
    weak = f"host=127.0.0.1 port={PG_PORT} dbname=app user=outboxd_tls sslmode=require"
    res = parallel(harness, {"weak": (["doctor"], {**env, "OUTBOXD_PG_CONNINFO": weak}),
                             "strong": (["doctor"], {**env, "OUTBOXD_PG_CONNINFO": weak.rsplit(" ", 1)[0]})})
    assert "WARN  PostgreSQL connection: sslmode=require, TLS" in res["weak"].stdout, res["weak"].out
    assert "overrides PGSSLMODE=verify-full" in res["weak"].stdout, res["weak"].out
    assert "PASS  PostgreSQL connection: sslmode=verify-full, TLS" in res["strong"].stdout, res["strong"].out
    no_secret(res["weak"].out + res["strong"].out)
