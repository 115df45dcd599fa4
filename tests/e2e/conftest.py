"""End-to-end fixtures: a real PostgreSQL 15 + wal2json and a real Kafka broker
(started by scripts/pg.sh and scripts/kafka.sh), and the outboxd binary.
OBX_DECODER (wal2json, the default, or pgoutput) picks the relay's decoder for
every test; with pgoutput each test's publication is named like its slot.

Each test gets its own outbox table, slot and topic prefix, so tests never see
each other's events."""
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("OUTBOXD_BIN", os.path.join(ROOT, "build", "outboxd"))
PG_PORT = os.environ.get("OBX_PG_PORT", "55432")
BROKERS = "127.0.0.1:" + os.environ.get("OBX_KAFKA_PORT", "9092")
APP_DSN = f"host=127.0.0.1 port={PG_PORT} dbname=app user=app password=app"
RELAY_DSN = f"host=127.0.0.1 port={PG_PORT} dbname=app user=outboxd password=outboxd"
DECODER = os.environ.get("OBX_DECODER", "wal2json")

OUTBOX_DDL = """
CREATE TABLE {t} (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype     text        NOT NULL,
    aggregateid       text,
    type              text        NOT NULL,
    payload           jsonb,
    aggregate_version bigint,
    topic             text,
    headers           jsonb,
    occurred_at       timestamptz NOT NULL DEFAULT now()
)"""


def pg(dsn=APP_DSN, autocommit=True):
    return psycopg.connect(dsn, autocommit=autocommit)


class Outboxd:
    """One outboxd process with its log captured line by line."""

    def __init__(self, env, args=("run",), binary=None):
        self.lines = []
        self.cond = threading.Condition()
        full = dict(os.environ)
        full.update(env)
        self.proc = subprocess.Popen([binary or BIN, *args], env=full, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def log(self):
        with self.cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=30):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None and not self._pending():
                    raise AssertionError(f"outboxd never logged /{pattern}/; log:\n" + "\n".join(self.lines))
                self.cond.wait(min(left, 0.2))

    def _pending(self):
        return self.reader.is_alive()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        return rc


class Harness:
    def __init__(self, name):
        self.name = name
        self.table = f"ob_{name}"
        self.slot = f"t_{name}"
        self.prefix = f"e2e.{name}.{uuid.uuid4().hex[:8]}"
        self.procs = []

    def env(self, **extra):
        e = {
            "OUTBOXD_PG_CONNINFO": RELAY_DSN,
            "OUTBOXD_SLOT_NAME": self.slot,
            "OUTBOXD_DECODER": DECODER,
            "OUTBOXD_OUTBOX_TABLE": self.table,
            "OUTBOXD_TOPIC_TEMPLATE": self.prefix + ".${aggregatetype}",
            "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": BROKERS,
            # Slot evidence per test: the fixture drops slots with SQL, and a
            # rerun of a test must not meet the evidence of the last run.
            "OUTBOXD_SLOT_EVIDENCE_TOPIC": self.prefix + ".slots",
            "OUTBOXD_LOG_FORMAT": "text",
            "OUTBOXD_STATUS_INTERVAL_MS": "1000",
            # Each process its own port, so tests never collide on 8080.
            "OUTBOXD_STATUS_LISTEN": f"127.0.0.1:{free_port()}",
        }
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def start(self, wait=True, **extra):
        p = Outboxd(self.env(**extra))
        self.procs.append(p)
        if wait:
            p.wait_for(r"streaming: streaming slot")
        return p

    def drop_slot(self):
        """`outboxd slot drop`: the slot and its evidence in Kafka (a slot
        dropped with SQL alone would make the next start stop with exit 4)."""
        out = subprocess.run([BIN, "slot", "drop", "--yes"], env={**os.environ, **self.env()},
                             capture_output=True, text=True, timeout=60)
        # 4: the slot did not exist (its Kafka record is cleared all the same).
        assert out.returncode in (0, 4) and "cleared" in out.stdout, out.stdout + out.stderr

    def create_slot(self):
        out = subprocess.run([BIN, "slot", "create"], env={**os.environ, **self.env()},
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr

    def slot_confirmed(self):
        with pg(RELAY_DSN) as c:
            row = c.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                            (self.slot,)).fetchone()
            return row[0] if row else None

    def wait_confirmed(self, target_lsn, timeout=60):
        """Everything up to target_lsn is acked by Kafka once the slot says so."""
        deadline = time.time() + timeout
        with pg(RELAY_DSN) as c:
            while time.time() < deadline:
                ok = c.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                               (target_lsn, self.slot)).fetchone()
                if ok and ok[0]:
                    return
                time.sleep(0.2)
        raise AssertionError(f"slot {self.slot} did not confirm {target_lsn}; at {self.slot_confirmed()}; logs:\n"
                             + "\n---\n".join(p.log() for p in self.procs))

    def consume(self, aggregate_types, idle_ms=4000):
        topics = ",".join(f"{self.prefix}.{a}" for a in aggregate_types)
        out = subprocess.run([BIN, "consume", "--brokers", BROKERS, "--topic", topics,
                              "--idle-exit-ms", str(idle_ms)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return [json.loads(l) for l in out.stdout.splitlines() if l.strip()]


def current_lsn():
    with pg(RELAY_DSN) as c:
        return c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


@pytest.fixture
def harness(request):
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    h = Harness(name)
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {h.table}")
        c.execute(OUTBOX_DDL.format(t=h.table))
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                  (h.slot,))
    drop_publication(h.slot)
    yield h
    for p in h.procs:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)
    # The slot pins WAL: never leave one behind.
    with pg(RELAY_DSN) as c:
        for _ in range(50):
            try:
                c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                          (h.slot,))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2)
    drop_publication(h.slot)
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {h.table}")


def drop_publication(name):
    """decoder = pgoutput: outboxd creates its publication (named like the slot
    in these tests); a leftover would name a dropped table."""
    with pg(SUPER_DSN) as c:
        c.execute(f'DROP PUBLICATION IF EXISTS "{name}"')


SUPER_DSN = f"host=127.0.0.1 port={PG_PORT} dbname=app user=postgres"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5):
    """(status, body) from the status port."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name, **labels):
    """Value of one Prometheus sample, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def wait_until(fn, timeout=30, interval=0.2, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def services(action, which, *args):
    """scripts/kafka.sh or scripts/pg.sh start|stop, for fault injection."""
    script = os.path.join(ROOT, "scripts", f"{which}.sh")
    out = subprocess.run(["bash", script, action, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def invalidate_slot(slot, filler="wal_filler"):
    """Writes WAL past max_slot_wal_keep_size = 16MB until the slot is lost.
    The caller resets the setting with reset_slot_keep_size() (in finally)."""
    with pg(SUPER_DSN) as c:
        c.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'")
        c.execute("SELECT pg_reload_conf()")
        c.execute(f"CREATE TABLE IF NOT EXISTS {filler} (b text)")

        def lost():
            c.execute(f"INSERT INTO {filler} SELECT repeat(md5(random()::text), 64) FROM generate_series(1, 20000)")
            c.execute(f"TRUNCATE {filler}")
            c.execute("SELECT pg_switch_wal()")
            c.execute("CHECKPOINT")
            return c.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                             (slot,)).fetchone()[0] == "lost"
        wait_until(lost, timeout=120, interval=0, what="slot invalidated")
        c.execute(f"DROP TABLE {filler}")


def reset_slot_keep_size():
    with pg(SUPER_DSN) as c:
        c.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        c.execute("SELECT pg_reload_conf()")


def pytest_configure(config):
    # A writer or reader thread that dies (a missing function, a lost
    # connection) must fail its test: otherwise the test checks the few
    # events written before it died and passes.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning")
