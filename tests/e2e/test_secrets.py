"""No secret ever leaves outboxd (docs/security.md): distinct secrets are
planted in every secret field, every command runs with good and bad input,
and everything each prints (stdout, stderr, and the status port's bodies of a
running relay) is searched for each secret."""
import os
import signal
import subprocess
import time
import uuid

from conftest import BIN, BROKERS, PG_PORT, free_port, http_get, pg, wait_until

TAG = uuid.uuid4().hex[:6]
# name -> value; every value distinct, so a leak names its field.
S = {k: f"{k}_{TAG}" for k in (
    "PgUriPw", "PgUriSslPw", "PgKwPw", "PgKwSslPw", "ApplyPw", "ApplySslPw", "SaslPw", "SslKeyPw", "KeystorePw",
    "OidcSecret", "NoEqPw", "MalUriPw", "SetPw", "PgEnvPw")}

PG_URI = f"postgresql://outboxd:{S['PgUriPw']}@127.0.0.1:{PG_PORT}/app?sslpassword={S['PgUriSslPw']}"
PG_KW = f"host=127.0.0.1 port={PG_PORT} dbname=app user=outboxd password={S['PgKwPw']} sslpassword={S['PgKwSslPw']}"
PG_DOWN = f"host=127.0.0.1 port=1 dbname=app user=outboxd password={S['PgKwPw']} sslpassword={S['PgKwSslPw']}"
PG_MALFORMED = f"postgresql://outboxd:{S['MalUriPw']}@[::1/app"
APPLY_KW = f"host=127.0.0.1 port=1 dbname=replica user=w password={S['ApplyPw']} sslpassword={S['ApplySslPw']}"


def _oidc_supported():
    """Debian's librdkafka is built without libcurl: it refuses the OIDC
    client secret, which then gets its own (refused) case below."""
    env = {"OUTBOXD_PG_CONNINFO": "host=x", "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": BROKERS,
           "OUTBOXD_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "probe"}
    return _run(["--print-config"], env).returncode == 0


def _env(extra):
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    full.update({"OUTBOXD_LOG_FORMAT": "text", "OUTBOXD_STATUS_LISTEN": "", "PGPASSWORD": S["PgEnvPw"]})
    full.update(extra)
    return full


def _run(args, env, timeout=60):
    return subprocess.run([BIN, *args], env=_env(env), capture_output=True, text=True, timeout=timeout)


def _run_for(args, env, seconds):
    """Runs a command that would go on retrying, stops it after seconds."""
    p = subprocess.Popen([BIN, *args], env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    return out + err


def _config(path, harness, conninfo, oidc):
    lines = [f"pg.conninfo = {conninfo}",
             f"apply.conninfo = {APPLY_KW}",
             f"slot.name = {harness.slot}",
             f"outbox.table = {harness.table}",
             f"topic.template = {harness.prefix}.${{aggregatetype}}",
             f"slot.evidence_topic = {harness.prefix}.slots",  # a rerun must not meet the last run's evidence
             f"kafka.bootstrap.servers = {BROKERS}",
             f"kafka.sasl.password = {S['SaslPw']}",
             f"kafka.ssl.key.password = {S['SslKeyPw']}",
             f"kafka.ssl.keystore.password = {S['KeystorePw']}",
             "status.interval_ms = 1000"]
    if oidc:
        lines.append(f"kafka.sasl.oauthbearer.client.secret = {S['OidcSecret']}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _leaks(outputs):
    return [f"{what}: {name}" for what, text in outputs.items() for name, v in S.items() if v in text]


def test_no_command_prints_a_secret(harness, tmp_path):
    oidc = _oidc_supported()
    good = _config(tmp_path / "good.conf", harness, PG_URI, oidc)
    kw = _config(tmp_path / "kw.conf", harness, PG_KW, oidc)
    down = _config(tmp_path / "down.conf", harness, PG_DOWN, oidc)
    malformed = _config(tmp_path / "malformed.conf", harness, PG_MALFORMED, oidc)
    noeq = tmp_path / "noeq.conf"
    noeq.write_text(open(good).read() + f"kafka.sasl.password: {S['NoEqPw']}\n")
    out = {}

    def rec(what, r, rc=None):
        text = r if isinstance(r, str) else r.stdout + r.stderr
        if rc is not None and not isinstance(r, str):
            assert r.returncode == rc, f"{what}: exit {r.returncode}\n{text}"
        out[what] = text
        return text

    # Every print path, good input.
    t = rec("--print-config", _run(["--print-config", "-c", good], {}), 0)
    assert "password=[redacted]" in t and "sslpassword=[redacted]" in t and "kafka.sasl.password = [redacted]" in t
    rec("--print-config keywords", _run(["run", "--print-config", "-c", kw], {}), 0)
    rec("apply --print-config", _run(["apply", "--print-config", "-c", good], {}), 0)
    rec("doctor", _run(["doctor", "-c", good], {}))
    rec("doctor keywords", _run(["doctor", "-c", kw], {}))
    rec("config-check", _run(["config-check", "--previous", kw, "-c", good], {}), 0)
    rec("slot status", _run(["slot", "status", "-c", good], {}))
    rec("consume", _run(["consume", "-c", good, "--topic", f"{harness.prefix}.none", "--idle-exit-ms", "1500"], {}))
    rec("verify", _run(["verify", "-c", good, "--topic", f"{harness.prefix}.none", "--idle-exit-ms", "1500"], {}))
    # Secrets from the environment and --set too.
    rec("env print", _run(["--print-config"], {"OUTBOXD_PG_CONNINFO": PG_KW, "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": BROKERS,
                                               "OUTBOXD_KAFKA_SASL_PASSWORD": S["SaslPw"]}), 0)
    rec("--set print", _run(["snapshot", "--print-config", "-c", good, "--set", f"kafka.sasl.password={S['SetPw']}"], {}))

    # Bad input.
    rec("config-check no '='", _run(["config-check", "--previous", good, "-c", str(noeq)], {}), 2)
    rec("--set without '='", _run(["snapshot", "-c", good, "--set", S["SetPw"]], {}), 2)
    rec("run unreachable", _run_for(["run", "-c", down], {}, 3))
    rec("run malformed URI", _run_for(["run", "-c", malformed], {}, 3))
    rec("doctor malformed URI", _run(["doctor", "-c", malformed], {}))
    rec("slot status malformed URI", _run(["slot", "status", "-c", malformed], {}))
    rec("slot status unreachable", _run(["slot", "status", "-c", down], {}))
    rec("snapshot no table", _run(["snapshot", "-c", good, "--table", f"no_such_{TAG}"], {}))
    rec("snapshot unreachable", _run(["snapshot", "-c", down, "--table", "t"], {}))
    rec("snapshot malformed URI", _run(["snapshot", "-c", malformed, "--table", "t"], {}))
    apply_env = {"OUTBOXD_APPLY_TOPICS": f"{harness.prefix}.none", "OUTBOXD_APPLY_TABLE": "rep",
                 "OUTBOXD_APPLY_COLUMNS": "name:name"}
    rec("apply unreachable", _run_for(["apply", "-c", good], apply_env, 3))
    rec("apply malformed URI", _run_for(["apply", "-c", good], {**apply_env, "OUTBOXD_APPLY_CONNINFO": PG_MALFORMED}, 2))
    rec("apply no table", _run(["apply", "-c", good], {**apply_env, "OUTBOXD_APPLY_TABLE": "",
                                                       "OUTBOXD_APPLY_CONNINFO": PG_KW}), 2)
    if not oidc:
        r = _run(["--print-config", "-c", good], {"OUTBOXD_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": S["OidcSecret"]})
        assert "sasl.oauthbearer.client.secret" in rec("OIDC refused", r, 2)

    # A running relay, debug logging on: its log and the status port.
    port = free_port()
    p = subprocess.Popen([BIN, "run", "-c", good], env=_env({"OUTBOXD_STATUS_LISTEN": f"127.0.0.1:{port}",
                                                             "OUTBOXD_LOG_LEVEL": "debug"}),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def ready():
            try:
                return http_get(port, "/readyz")[0] == 200
            except OSError:  # not listening yet (URLError is an OSError)
                return False
        wait_until(ready, timeout=60, what="relay ready")
        with pg() as c:
            c.execute(f"INSERT INTO {harness.table}(aggregatetype, aggregateid, type, payload) "
                      f"VALUES ('athlete', 'a1', 'Created', '{{}}')")
        wait_until(lambda: '"acked":1' in http_get(port, "/status")[1].replace(" ", ""), timeout=30, what="acked")
        for path in ("/status", "/metrics", "/healthz", "/readyz", "/"):
            code, body = http_get(port, path)
            assert code == 200, (path, body)
            out[f"GET {path}"] = body
    finally:
        p.send_signal(signal.SIGTERM)
        so, se = p.communicate(timeout=60)
    out["run (debug log)"] = so + se
    assert p.returncode == 0, se[-3000:]

    leaks = _leaks(out)
    assert not leaks, "secrets printed:\n" + "\n".join(leaks) + "\n\n" + "\n\n".join(
        f"== {w}\n{t[-2000:]}" for w, t in out.items() if any(v in t for v in S.values()))
