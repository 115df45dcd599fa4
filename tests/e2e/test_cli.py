"""The command line as an operator meets it (issue 17): options each command
takes, help without a config, exit codes, one log format, verify that can
fail, doctor verdicts that match `run`, the state while PostgreSQL is down."""
import json
import os
import re
import subprocess
import time

from conftest import BIN, BROKERS, ROOT, SUPER_DSN, Outboxd, current_lsn, http_get, metric, pg, wait_until

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
COMMANDS = ["run", "slot", "doctor", "apply", "config-check", "snapshot", "consume", "verify", "config-doc"]


def run(args, env=None, **kw):
    return subprocess.run([BIN, *args], env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, **kw)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_help_and_version_need_no_config():
    """`outboxd <command> --help` prints that command's usage, options and
    exit codes with no config at all; -V prints the CMake project version."""
    version = re.search(r"project\(outboxd VERSION ([0-9.]+)", open(os.path.join(ROOT, "CMakeLists.txt")).read())[1]
    for args in (["-V"], ["--version"], ["version"], ["run", "-V"]):
        r = run(args)
        assert r.returncode == 0 and r.stdout.startswith(f"outboxd {version} (librdkafka "), (args, r.stdout)
    for cmd in COMMANDS:
        r = run([cmd, "--help"])
        assert r.returncode == 0 and r.stdout.startswith(f"usage: outboxd {cmd}"), (cmd, r.stdout, r.stderr)
        if cmd != "config-doc":
            assert "exit codes:" in r.stdout and "64" in r.stdout and "-c, --config" in r.stdout, (cmd, r.stdout)
    assert "drop" in run(["slot", "status", "--help"]).stdout
    assert "--previous-env" in run(["help", "config-check"]).stdout


def test_usage_errors_are_exit_64_in_the_log_format():
    """Unknown or misplaced options and malformed numbers: exit 64, one log
    line in the process's format (JSON when stderr is not a terminal)."""
    cases = [["doctor", "--topic", "foo"], ["verify", "--table", "x"], ["consume", "--max", "abc"],
             ["consume", "--idle-exit-ms", "-5"], ["verify", "--expect", "2x"], ["run", "--bogus"],
             ["snapshot", "--page-size", "ten"], ["slot"], ["slot", "list"], ["config-check"], ["nocmd"],
             ["run", "extra"], ["consume", "--topic"], ["slot", "status", "--yes"], ["config-doc", "-x"],
             ["apply", "--set", "a=b"], ["consume", "--topic", "a,,b"], ["verify", "-t", "a,"], ["consume", "-t", ","]]
    for args in cases:
        r = run(args)
        assert r.returncode == 64, (args, r.returncode, r.stderr)
        lines = json_lines(r.stderr)
        assert len(lines) == 1 and lines[0]["event"] == "usage" and "--help" in lines[0]["msg"], (args, r.stderr)


def test_one_log_format_from_the_first_line(tmp_path):
    """Early config errors use the format the config asks for (or the
    default), like every later line."""
    bad = tmp_path / "bad.conf"
    bad.write_text("slot.nmae = x\n")
    r = run(["run", "-c", str(bad)])
    assert r.returncode == 2 and json_lines(r.stderr)[0]["event"] == "config", r.stderr
    text = tmp_path / "text.conf"
    text.write_text("log.format = text   # for people\nslot.nmae = x\n")
    r = run(["run", "-c", str(text)])
    assert r.returncode == 2 and re.match(r"^\S+Z error\s+config: .*slot\.nmae", r.stderr), r.stderr
    r = run(["run", "-c", str(bad)], env={"OUTBOXD_LOG_FORMAT": "text"})
    assert r.returncode == 2 and not r.stderr.startswith("{"), r.stderr
    r = run(["doctor", "--topic", "x"], env={"OUTBOXD_LOG_FORMAT": "text"})
    assert r.returncode == 64 and " usage: " in r.stderr, r.stderr
    # Every way to name the file or the format: getopt's -cFILE, --set (which
    # wins over the file, for the first line and for every later one).
    r = run(["run", f"-c{text}"])
    assert r.returncode == 2 and re.match(r"^\S+Z error\s+config: ", r.stderr), r.stderr
    r = run(["run", "-c", str(bad), "--set", "log.format=text"])
    assert r.returncode == 2 and not r.stderr.startswith("{"), r.stderr
    ok = tmp_path / "ok.conf"
    ok.write_text("log.format = text\npg.conninfo = host=127.0.0.1 port=1\nkafka.bootstrap.servers = 127.0.0.1:1\n"
                  "status.listen =\n")
    p = subprocess.Popen([BIN, "run", "-c", str(ok), "--set", "log.format=json", "--set", "log.level=warn"],
                         env=CLEAN_ENV, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    time.sleep(2)
    p.terminate()
    lines = json_lines(p.communicate(timeout=10)[1])
    assert lines and all(line["level"] != "info" for line in lines), lines  # no "start" line: warn and up


def test_trailing_comments_and_checked_values(tmp_path):
    """`key = value   # comment` keeps only the value; a template or port that
    cannot work stops outboxd at start (exit 2), not at the first row."""
    conf = tmp_path / "c.conf"
    conf.write_text("pg.conninfo = host=127.0.0.1 port=1\nkafka.bootstrap.servers = 127.0.0.1:1\n"
                    "topic.template = outbox.${aggregatetype}   # per team\n"
                    "outbox.table = \"odd #name\"\n")
    r = run(["--print-config", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    assert "topic.template = outbox.${aggregatetype}\n" in r.stdout and "outbox.table = odd #name\n" in r.stdout
    for key, value, needle in [("topic.template", "outbox.${type}", "unknown placeholder"),
                               ("topic.template", "out box.${aggregatetype}", "legal Kafka topic"),
                               ("status.listen", "127.0.0.1:99999", "1-65535"),
                               ("status.listen", "nonsense", "1-65535"),
                               ("status.listen", "999.1.1.1:8080", "999.1.1.1"),
                               ("pg.conninfo", "host=127.0.0.1 port=1 passwrd=hunter2", "did you mean"),
                               ("pg.conninfo", "host=127.0.0.1 password='hunter2", "cannot be parsed")]:
        r = run(["run", "-c", str(conf), "--set", f"{key}={value}"])
        assert r.returncode == 2 and needle in r.stderr and key in r.stderr, (key, value, r.stderr)
        assert "hunter2" not in r.stderr, r.stderr
    # apply checks its own database's conninfo the same way (not a retry loop).
    r = run(["apply"], env={"OUTBOXD_APPLY_CONNINFO": "host=127.0.0.1 port=1 dbnme=x", "OUTBOXD_APPLY_TOPICS": "t",
                            "OUTBOXD_APPLY_TABLE": "r", "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert r.returncode == 2 and 'dbname' in r.stderr and "did you mean" in r.stderr, r.stderr


def test_status_port_on_ipv6(harness):
    """status.listen = [::1]:PORT serves /healthz over IPv6."""
    p = harness.start(OUTBOXD_STATUS_LISTEN="[::1]:25702")
    import urllib.request
    with urllib.request.urlopen("http://[::1]:25702/healthz", timeout=5) as r:
        assert r.status == 200
    assert p.stop() == 0


def test_connecting_state_while_postgres_is_down(harness):
    """PostgreSQL unreachable or refusing the login at start: state
    `connecting`, restarts_total rising (the runbook's reading)."""
    for conninfo in ("host=127.0.0.1 port=1 dbname=app user=outboxd connect_timeout=2",
                     RELAY_BAD_PASSWORD):
        env = harness.env(OUTBOXD_PG_CONNINFO=conninfo, OUTBOXD_RECONNECT_BACKOFF_MAX_MS="300")
        port = int(env["OUTBOXD_STATUS_LISTEN"].rsplit(":", 1)[1])
        p = Outboxd(env)
        harness.procs.append(p)
        wait_until(lambda: _status_up(port), what="status port")
        first = wait_until(lambda: (lambda s: s["state"] == "connecting" and s["restarts"] >= 1 and s)(
            json.loads(http_get(port, "/status")[1])), timeout=15, what="connecting")
        wait_until(lambda: metric(http_get(port, "/metrics")[1], "outboxd_restarts_total") > first["restarts"],
                   timeout=15, what="restarts rising")
        assert metric(http_get(port, "/metrics")[1], "outboxd_state", state="connecting") == 1
        version = re.search(r"project\(outboxd VERSION ([0-9.]+)", open(os.path.join(ROOT, "CMakeLists.txt")).read())[1]
        assert first["version"] == version
        assert metric(http_get(port, "/metrics")[1], "outboxd_build_info", version=version) == 1
        assert p.stop() == 0


def _status_up(port):
    try:
        return http_get(port, "/status")[0] == 200
    except OSError:
        return False


# The test server trusts loopback logins, so a refused login is a role that
# does not exist: the same FATAL at connect (class 28) as a wrong password.
RELAY_BAD_PASSWORD = "host=127.0.0.1 port={} dbname=app user=no_such_role password=wrong-password".format(
    os.environ.get("OBX_PG_PORT", "55432"))


def test_verify_fails_when_it_read_nothing(harness, tmp_path):
    """verify fails (exit 1, a reason in the JSON) when Kafka cannot be
    reached, a topic does not exist or fewer events arrived than expected;
    stdout is exactly one JSON line; -X overrides the config's kafka.*."""
    p = harness.start()
    with pg() as c:
        for i in range(3):
            c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload, aggregate_version)"
                      f" VALUES ('athlete', 'a{i}', 'U', '{{}}', 1)")
    harness.wait_confirmed(current_lsn())
    assert p.stop() == 0
    topic = harness.prefix + ".athlete"
    dead = tmp_path / "dead.conf"
    dead.write_text("kafka.bootstrap.servers = 127.0.0.1:1\n")

    def verify(*args):
        r = run(["verify", "-c", str(dead), "--idle-exit-ms", "2000", *args])
        out = json_lines(r.stdout)
        assert len(out) == 1, r.stdout  # progress and problems went to stderr
        return r.returncode, out[0], r.stderr

    rc, s, err = verify("--topic", topic)
    assert rc == 1 and not s["ok"] and "cannot reach Kafka at 127.0.0.1:1" in s["reason"], s
    rc, s, err = verify("-X", f"bootstrap.servers={BROKERS}", "--topic", topic)
    assert rc == 0 and s["ok"] and s["events"] == 3 and s["reason"] == "", s
    assert "reading " in err and BROKERS in err
    rc, s, _ = verify("-X", f"bootstrap.servers={BROKERS}", "--topic", topic + "x")
    assert rc == 1 and s["reason"] == f"topic {topic}x does not exist", s
    rc, s, _ = verify("-b", BROKERS, "--topic", "^" + topic.replace(".", "[.]") + "-nomatch")
    assert rc == 1 and s["reason"].startswith("no topic matches"), s
    rc, s, _ = verify("-b", BROKERS, "--topic", topic, "--expect", "4")
    assert rc == 1 and s["reason"] == "read 3 event(s), expected at least 4", s
    rc, s, _ = verify("-b", BROKERS, "--topic", "^" + topic.replace(".", "[.]") + "$", "--expect", "3")
    assert rc == 0 and s["unique"] == 3, s
    with pg() as c:
        ids = [str(row[0]) for row in c.execute(f"SELECT id FROM {harness.table}")]
    padded = tmp_path / "ids.txt"  # as psql's aligned output or a Windows editor leaves them
    padded.write_text("".join(f"  {i} \r\n" for i in ids) + "   \n")
    rc, s, _ = verify("-b", BROKERS, "--topic", topic, "--expected", str(padded))
    assert rc == 0 and s["expected"] == 3 and s["missing"] == 0, s
    r = run(["verify", "-X", "no.such.property=1", "-b", BROKERS, "--topic", topic])
    assert r.returncode == 2 and "kafka.no.such.property" in r.stderr, r.stderr


def test_verify_checks_its_expected_file_first(tmp_path):
    """A wrong --expected path fails at once (exit 2), not after reading the
    whole topic (here against a broker that is down: the file is opened
    before Kafka is)."""
    start = time.monotonic()
    r = run(["verify", "-b", "127.0.0.1:1", "--topic", "x", "--idle-exit-ms", "20000",
             "--expected", str(tmp_path / "no-such-ids.txt")])
    assert r.returncode == 2 and "no-such-ids.txt" in r.stderr and time.monotonic() - start < 5, r.stderr
    assert r.stdout == "", r.stdout


def test_slot_exit_codes_and_drop_confirmation(harness):
    """A missing slot is 4 for `slot status` and `slot drop`; drop needs
    --yes when stdin is not a terminal and then leaves the slot alone."""
    env = harness.env()
    r = run(["slot", "status"], env)
    assert r.returncode == 4 and "does not exist" in r.stdout, r.stdout + r.stderr
    r = run(["slot", "drop", "--yes"], env)
    assert r.returncode == 4 and "did not exist" in r.stdout and "cleared" in r.stdout, r.stdout + r.stderr
    assert run(["slot", "create"], env).returncode == 0
    r = run(["slot", "drop"], env)
    assert r.returncode == 64 and "--yes" in r.stderr, r.stderr
    assert run(["slot", "status"], env).returncode == 0  # still there
    r = run(["slot", "drop", "-y"], env)
    assert r.returncode == 0 and "dropped" in r.stdout, r.stdout + r.stderr
    assert run(["slot", "status"], env).returncode == 4


def test_config_check_compares_the_effective_config(tmp_path):
    """The environment is part of the configuration: a key rule changed
    through OUTBOXD_* is refused (exit 5, not a usage error's 64)."""
    old = tmp_path / "old.conf"
    old.write_text("pg.conninfo = host=x\nkafka.bootstrap.servers = k:9092\n")
    change = {"OUTBOXD_OUTBOX_COLUMN_AGGREGATEID": "tenant_id"}
    r = run(["config-check", "--previous", str(old), "-c", str(old)], env=change)
    assert r.returncode == 5 and "tenant_id" in r.stderr, r.stderr
    prev_env = tmp_path / "prev.env"
    prev_env.write_text("export OUTBOXD_OUTBOX_COLUMN_AGGREGATEID=tenant_id\n")
    r = run(["config-check", "--previous", str(old), "--previous-env", str(prev_env), "-c", str(old)], env=change)
    assert r.returncode == 0, r.stderr
    r = run(["config-check", "--previous", str(old), "-c", str(old), "--env-file", str(prev_env)])
    assert r.returncode == 5, r.stderr
    # A line it cannot read is an error (2), never a variable silently left
    # out of the comparison: a ConfigMap's YAML, spaces around =.
    for text in ("OUTBOXD_OUTBOX_COLUMN_AGGREGATEID: tenant_id\n", "OUTBOXD_OUTBOX_COLUMN_AGGREGATEID = tenant_id\n"):
        prev_env.write_text(text)
        r = run(["config-check", "--previous", str(old), "-c", str(old), "--env-file", str(prev_env)])
        assert r.returncode == 2 and "not a NAME=VALUE line" in r.stderr, r.stderr
    # A misspelt variable is named (it changes nothing, so the check passes).
    r = run(["config-check", "--previous", str(old), "-c", str(old)],
            env={"OUTBOXD_OUTBOX_COLUMN_AGGREGATEDI": "tenant_id", "OUTBOXD_SERVICE_HOST": "10.0.0.1"})
    assert r.returncode == 0 and "OUTBOXD_OUTBOX_COLUMN_AGGREGATEDI is not a config key" in r.stderr, r.stderr
    assert "OUTBOXD_SERVICE_HOST" not in r.stderr, r.stderr


def test_doctor_verdicts_match_run(harness):
    """slot.create = false with no slot is a FAIL (run exits 4); a missing
    dead-letter topic FAILs although this broker auto-creates topics, and
    asking does not create it; a bad template is a config FAIL."""
    env = harness.env(OUTBOXD_SLOT_CREATE="false", OUTBOXD_POISON_POLICY="dead-letter",
                      OUTBOXD_POISON_DLQ_TOPIC=harness.prefix + ".dlq")
    r = run(["doctor"], env)
    assert r.returncode == 1, r.stdout
    assert re.search(rf"FAIL  slot {harness.slot} does not exist", r.stdout), r.stdout
    assert f"FAIL  dead-letter topic {harness.prefix}.dlq exists" in r.stdout, r.stdout
    assert "auto.create.topics.enable = true" in r.stdout and "PASS  configuration is valid" in r.stdout
    assert re.search(r"PASS  server version 1[3-9]|PASS  server version [2-9]\d", r.stdout), r.stdout
    r = run(["doctor"], env)  # asking twice: still missing, doctor never created it
    assert f"FAIL  dead-letter topic {harness.prefix}.dlq exists" in r.stdout
    r = run(["doctor"], harness.env(OUTBOXD_TOPIC_TEMPLATE="x.${aggregate_type}"))
    assert r.returncode == 1 and "FAIL  configuration is valid: topic.template" in r.stdout, r.stdout


def test_doctor_message_prefix_mismatch(harness):
    """A producer role whose outboxd.message_prefix differs from the relay's
    outbox.message_prefix would lose its outbox_emit() events silently
    (wal2json drops other prefixes): doctor names the role and both values
    (WARN: another relay may read it). The same prefix is no warning; ''
    means the default, outboxd.event."""
    roles = [f"obx_{harness.slot}_{n}"[:60] for n in ("typo", "same", "empty")]
    mine = "outboxd.event." + harness.name
    with pg(SUPER_DSN) as c:
        for role, value in zip(roles, (mine + "x", mine, "")):
            c.execute(f'CREATE ROLE "{role}"')
            c.execute(f'ALTER ROLE "{role}" SET outboxd.message_prefix = ' + "'%s'" % value)
    try:
        r = run(["doctor"], harness.env(OUTBOXD_OUTBOX_MESSAGE_PREFIX=mine))
        warned = [l for l in r.stdout.splitlines() if l.startswith("WARN  outboxd.message_prefix")]
        assert {roles[0], roles[2]} == {w.split(" for role ")[1].split()[0] for w in warned}, r.stdout
        assert any(f"'{mine}x' for role {roles[0]} in every database" in w for w in warned), warned
        r = run(["doctor"], harness.env(OUTBOXD_OUTBOX_MESSAGE_PREFIX="outboxd.event"))
        warned = [l for l in r.stdout.splitlines() if l.startswith("WARN  outboxd.message_prefix")]
        assert {roles[0], roles[1]} == {w.split(" for role ")[1].split()[0] for w in warned}, r.stdout
    finally:
        with pg(SUPER_DSN) as c:
            for role in roles:
                c.execute(f'DROP ROLE "{role}"')


def test_supported_versions_table_matches_the_test_stack():
    """README's supported-versions table names, as "tested in CI", what this
    stack runs: the PostgreSQL server, the Kafka jars, outboxd's librdkafka."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Supported versions"):]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in ("component", "---"):
            rows[cells[0]] = cells
    assert set(rows) == {"PostgreSQL", "Kafka", "librdkafka"}, rows
    with pg() as c:
        major = c.execute("SHOW server_version_num").fetchone()[0]
    # "15 (wal2json, pgoutput); 18 (pgoutput)": this stack's major, and each
    # other major the PostgreSQL 18 pass runs (scripts/pg18.sh's binaries).
    tested = re.findall(r"\b(\d+) \(", rows["PostgreSQL"][2])
    assert str(int(major) // 10000) in tested, (rows["PostgreSQL"], major)
    for m in tested:
        assert m in rows["PostgreSQL"][1], rows["PostgreSQL"]
        if m != str(int(major) // 10000):
            bindir = subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg18.sh"), "bindir"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            ver = subprocess.run([os.path.join(bindir, "postgres"), "--version"], capture_output=True, text=True,
                                 check=True).stdout
            assert re.search(rf"\) {m}\.", ver), (m, ver)
    libs = os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "kafka", "libs")
    jars = [re.match(r"kafka_2\.13-(\d+\.\d+)\.\d+\.jar$", f) for f in os.listdir(libs)]
    kafka = {m[1] for m in jars if m}
    pom = re.search(r"<artifactId>kafka_2\.13</artifactId>\s*<version>(\d+\.\d+)", open(
        os.path.join(ROOT, "deploy", "kafka", "pom.xml")).read())[1]
    assert kafka == {pom} == {rows["Kafka"][2]}, (kafka, pom, rows["Kafka"])
    rdk = re.search(r"librdkafka (\S+?),", run(["-V"]).stdout)[1]
    assert rows["librdkafka"][2] == rdk, (rows["librdkafka"], rdk)
