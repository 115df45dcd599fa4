#!/usr/bin/env python3
"""The side-by-side benchmark behind bench/run.sh (run that, not this).

The default run is bench/full.py (FullBench, on this file's Bench): drain,
apply, message outbox and fixed-rate latency, every figure --reps times. This
file keeps what all modes share (services, topics, relays, /proc readings, the
drain and latency read-backs) and two narrower modes:

A/B mode (--outboxd-bin LABEL=PATH given twice or more, or --rounds N, or --only
without debezium): no Debezium, no pgoutput. Round after round, each binary in
turn (A B A B ...) gets its own fresh backlog (its slots created just before the
writes), drained by the slot reader on wal2json (the decoding limit, unless --only
drops `limit`) and then by that binary, followed by that binary's latency steps
on a fresh slot. Machine noise (shared cores) then falls on both binaries alike,
and the spread between rounds of one binary is the noise to compare with.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTITIONS = 3


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Stop(Exception):
    pass


def on_signal(signum, _frame):
    raise Stop(f"signal {signum}")


# ---------------------------------------------------------------- /proc
def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime (all threads)


def proc_mem_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon"):
                out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------- Kafka helpers
class Kafka:
    def __init__(self, brokers, java_cp):
        self.brokers = brokers
        self.java_cp = java_cp

    def admin(self, *args):
        subprocess.run(["java", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", self.java_cp,
                        "io.outboxd.bench.BenchAdmin", args[0], self.brokers, *args[1:]],
                       check=True, stdout=subprocess.DEVNULL)

    def count(self, topic):
        """Records in a topic = sum of its partitions' end offsets (acked records)."""
        cmd = ["kcat", "-b", self.brokers, "-Q"]
        for p in range(PARTITIONS):
            cmd += ["-t", f"{topic}:{p}:-1"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        offs = [int(m) for m in re.findall(r"offset (-?\d+)", out.stdout)]
        return sum(o for o in offs if o > 0) if len(offs) == PARTITIONS else 0

    def read(self, topic, fmt):
        p = subprocess.Popen(["kcat", "-C", "-b", self.brokers, "-t", topic, "-o", "beginning", "-e", "-q",
                              "-f", fmt], stdout=subprocess.PIPE, text=True, errors="replace")
        for line in p.stdout:
            yield line
        p.wait()


# ---------------------------------------------------------------- processes
class Proc:
    """A relay process whose CPU and memory we read from /proc."""

    def __init__(self, name, cmd, env, logfile):
        self.name = name
        self.logpath = logfile
        self.log = open(logfile, "w")
        self.t_start = time.time()
        self.p = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
                                  cwd=ROOT)
        self.max_rss_kb = 0
        self.max_anon_kb = 0

    def cpu(self):
        return proc_cpu_s(self.p.pid)

    def mem(self):
        m = proc_mem_kb(self.p.pid)
        self.max_rss_kb = max(self.max_rss_kb, m.get("VmRSS", 0))
        # Private memory (heap, stacks), sampled: the kernel keeps no peak of
        # it. RSS also counts the shared libraries' pages (13 of outboxd's 16
        # MiB at rest), which a JVM's RSS hardly notices.
        self.max_anon_kb = max(self.max_anon_kb, m.get("RssAnon", 0))
        return m

    def alive(self):
        return self.p.poll() is None

    def check(self):
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see {self.logpath}")

    def stop(self, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout} s, killing")
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_ticks():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def busy_since(t0):
    b1, t1 = cpu_ticks()
    return round((b1 - t0[0]) / max(1, t1 - t0[1]), 3)


def percentile(sorted_vals, q):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


# ---------------------------------------------------------------- the run
class Bench:
    def __init__(self, a):
        self.a = a
        self.id = a.run_id                      # PG object names
        self.topic_id = a.run_id.replace("_", "-")
        self.app = f"host=127.0.0.1 port={a.pg_port} dbname=app user=app password=app"
        self.rel = f"host=127.0.0.1 port={a.pg_port} dbname=app user=outboxd password=outboxd"
        self.super = f"host=127.0.0.1 port={a.pg_port} dbname=app user=postgres"  # CHECKPOINT only
        self.table = f"{self.id}_outbox"
        self.pub = f"{self.id}_pub"
        self.opub = f"{self.id}_opub"  # outboxd's own (decoder = pgoutput), as outboxd creates it
        self.slots = []
        self.topics = []
        self.procs = []
        self.lg = None  # the running load generator, if any
        self.kafka = Kafka(a.brokers, a.java_cp)
        self.outdir = a.work_dir
        self.bins = dict(a.outboxd_bin) if a.outboxd_bin else {"outboxd": a.outboxd}
        self.ab = ab_mode(a)
        # A/B mode: one relay run per (round, binary), named LABEL-ROUND.
        self.units = [(f"{label}-{k}", k, label, path) for k in range(1, a.rounds + 1)
                      for label, path in self.bins.items()] if self.ab else []
        self.res = {"run_id": a.stamp, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "params": {"backlog_rows": a.rows, "payload_pad_bytes": a.pad, "rates": a.rates,
                               "step_seconds": a.seconds, "warmup_seconds": a.warmup,
                               "rows_per_txn": {str(r): self.batch_for(r) for r in a.rates},
                               "debezium_xmx": a.xmx, "partitions": PARTITIONS},
                    "drain": {}, "latency": {}, "memory": {}}

    def batch_for(self, rate):
        return 1 if rate <= 2000 else 10 if rate <= 10000 else 30

    def sql(self, dsn, q, args=None, fetch=False):
        with psycopg.connect(dsn, autocommit=True) as c:
            cur = c.execute(q, args)
            return cur.fetchall() if fetch else None

    def create_slot(self, name, plugin):
        self.slots.append(name)
        return self.sql(self.rel, "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)",
                        (name, plugin), fetch=True)[0][0]

    def topic(self, system, aggtype):
        return f"bench.{self.topic_id}.{system}.{aggtype}"

    # -------------------------------------------------------- setup / cleanup
    def setup(self):
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        others = self.sql(self.rel, "SELECT slot_name FROM pg_replication_slots WHERE active", fetch=True)
        # Other users of the same PG/Kafka (tests, demos) make the numbers noisy: record it.
        self.res["environment"] = {"loadavg_at_start": load, "other_active_slots": [r[0] for r in others],
                                   "services": f"PostgreSQL 127.0.0.1:{self.a.pg_port}, Kafka {self.a.brokers}, "
                                               f"state in {os.environ.get('OBX_RUN_DIR', '/tmp/outboxd-run')}"}
        self.services0 = self.services()
        log(f"table {self.table}, publication {self.pub}")
        # The project's outbox DDL, under this run's table name.
        with open(os.path.join(ROOT, "deploy", "sql", "outbox.sql")) as f:
            ddl = f.read()
        ddl, n = re.subn(r"CREATE TABLE IF NOT EXISTS outbox \(", f"CREATE TABLE {self.table} (", ddl)
        if n != 1:
            raise RuntimeError("deploy/sql/outbox.sql: no 'CREATE TABLE IF NOT EXISTS outbox (' to rename")
        self.sql(self.app, ddl)
        # The publication must exist before the rows are written: pgoutput reads it
        # from the catalog as of each change.
        self.sql(self.app, f"CREATE PUBLICATION {self.pub} FOR TABLE {self.table}")
        sig = self.sql(self.app, "SELECT to_regclass('public.outboxd_signals') IS NOT NULL", fetch=True)[0][0]
        self.sql(self.app, f"CREATE PUBLICATION {self.opub} FOR TABLE {self.table}{', outboxd_signals' if sig else ''}"
                           " WITH (publish = 'insert', publish_via_partition_root = true)")
        self.topics = self.topic_list()
        log(f"creating {len(self.topics)} topics (LogAppendTime, {PARTITIONS} partitions)")
        self.kafka.admin("create", str(PARTITIONS), *self.topics)
        # A freshly started broker answers the first idempotent producer with
        # "coordinator load in progress" for a while: let that happen here.
        init = f"bench.{self.topic_id}.init"
        self.topics.append(init)
        subprocess.run(["kcat", "-P", "-b", self.a.brokers, "-t", init, "-X", "enable.idempotence=true"],
                       input=b"init\n", check=True, timeout=60)

    def topic_list(self):
        aggs = ["drain", "lat"]
        systems = ([u[0] for u in self.units] if self.ab else ["outboxd", "outboxd_pgoutput"] if self.a.decoders
                   else ["outboxd", "debezium", "outboxd_pgoutput"])
        return [self.topic(s, g) for s in systems for g in aggs]

    def services(self):
        """Identity of the running services, to notice a restart by someone else mid-run."""
        kpid = None
        try:
            with open(os.path.join(os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run"), "kafka", "kafka.pid")) as f:
                kpid = f.read().strip()
        except OSError:
            pass
        pg = self.sql(self.rel, "SELECT pg_postmaster_start_time()::text", fetch=True)[0][0]
        return {"kafka_pid": kpid, "pg_started": pg}

    def cleanup(self):
        if self.lg is not None and self.lg.poll() is None:
            self.lg.terminate()  # apply_bench.py cleans up on SIGTERM
            try:
                self.lg.wait(30)
            except subprocess.TimeoutExpired:
                self.lg.kill()
                self.lg.wait()
        for p in self.procs:
            try:
                p.stop(timeout=20)
            except Exception as e:  # noqa: BLE001 -- cleanup goes on
                log(f"stopping {p.name}: {e}")
        try:
            with psycopg.connect(self.rel, autocommit=True) as c:
                for s in self.slots:
                    for _ in range(50):
                        try:
                            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                      "WHERE slot_name = %s", (s,))
                            break
                        except psycopg.errors.ObjectInUse:
                            time.sleep(0.2)
                    else:
                        log(f"could not drop slot {s}: still active")
        except psycopg.Error as e:
            log(f"dropping slots: {e} (bench/run.sh retries)")
        try:
            self.sql(self.app, f"DROP PUBLICATION IF EXISTS {self.pub}")
            self.sql(self.app, f"DROP PUBLICATION IF EXISTS {self.opub}")
            self.sql(self.app, f"DROP TABLE IF EXISTS {self.table}")
        except Exception as e:  # noqa: BLE001
            log(f"dropping publication/table: {e}")
        if self.topics and not self.a.keep_topics:
            try:
                self.kafka.admin("delete", *self.topics)
            except Exception as e:  # noqa: BLE001
                log(f"deleting topics: {e}")

    @staticmethod
    def rate_name(rate):
        return f"r{rate // 1000}k" if rate % 1000 == 0 else f"r{rate}"

    # -------------------------------------------------------- relays
    def start_outboxd(self, slot, tag, system="outboxd", binary=None, decoder="wal2json"):
        env = {"OUTBOXD_DECODER": decoder, "OUTBOXD_PUBLICATION_NAME": self.opub,"OUTBOXD_PG_CONNINFO": self.rel, "OUTBOXD_SLOT_NAME": slot, "OUTBOXD_SLOT_CREATE": "false",
               "OUTBOXD_OUTBOX_TABLE": self.table, "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS": self.a.brokers,
               "OUTBOXD_TOPIC_TEMPLATE": f"bench.{self.topic_id}.{system}.${{aggregatetype}}",
               "OUTBOXD_LOG_FORMAT": "text",
               # The status port (default 127.0.0.1:8080) would collide with other
               # outboxd processes on this machine (tests); the bench does not use it.
               "OUTBOXD_STATUS_LISTEN": ""}
        p = Proc(f"{system}-{tag}", [binary or self.a.outboxd, "run"], env,
                 os.path.join(self.outdir, f"{system}-{tag}.log"))
        self.procs.append(p)
        return p

    def start_debezium(self, slot, tag, system="debezium"):
        env = {"BENCH_KAFKA_BROKERS": self.a.brokers, "BENCH_TOPIC_PREFIX": f"bench.{self.topic_id}.{system}",
               "BENCH_OFFSET_FILE": os.path.join(self.outdir, f"{system}-{tag}.offsets"),
               "BENCH_PG_PORT": str(self.a.pg_port), "BENCH_SLOT": slot, "BENCH_PUBLICATION": self.pub,
               "BENCH_TABLE": f"public.{self.table}"}
        cmd = ["java", f"-Xmx{self.a.xmx}", "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
               "-cp", self.a.java_cp, "io.outboxd.bench.DebeziumRelay"]
        p = Proc(f"{system}-{tag}", cmd, env, os.path.join(self.outdir, f"{system}-{tag}.log"))
        self.procs.append(p)
        return p

    def stop(self, p):
        rc = p.stop()
        self.procs.remove(p)
        return rc

    def wait_streaming(self, p, slot, timeout=120):
        """Streaming = the slot is active (a walsender serves it)."""
        deadline = time.time() + timeout
        with psycopg.connect(self.rel, autocommit=True) as c:
            while time.time() < deadline:
                p.check()
                r = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
                if r and r[0]:
                    return time.time() - p.t_start
                time.sleep(0.05)
        raise RuntimeError(f"{p.name} did not start streaming slot {slot} in {timeout} s; see {p.logpath}")

    def wait_count(self, p, topic, n, timeout, every=0.1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            p.check()
            c = self.kafka.count(topic)
            if c >= n:
                return c
            time.sleep(every)
        raise RuntimeError(f"{p.name}: {topic} has {self.kafka.count(topic)} of {n} records after {timeout} s")

    # -------------------------------------------------------- phase 1: drain
    def write_backlog(self):
        n, pad = self.a.rows, self.a.pad
        log(f"writing the backlog: {n} rows (~{pad} B payload) in transactions of 1000")
        t = time.time()
        self.sql(self.app, f"""DO $$ BEGIN FOR t IN 0..({n} / 1000 - 1) LOOP
          INSERT INTO {self.table} (aggregatetype, aggregateid, type, aggregate_version, payload)
          SELECT 'drain', 'agg-' || (g % 5000), 'Updated', g,
                 jsonb_build_object('n', g, 'name', 'Zoë "q" ' || g, 'pad', repeat('x', {pad}))
            FROM generate_series(t * 1000, t * 1000 + 999) g;
          COMMIT; END LOOP; END $$""")
        end_lsn = self.sql(self.rel, "SELECT pg_current_wal_lsn()::text", fetch=True)[0][0]
        self.sql(self.super, "CHECKPOINT")  # not during the drains
        log(f"backlog written in {time.time() - t:.1f} s, end LSN {end_lsn}")
        return end_lsn

    def reader_options(self, plugin):
        """outboxd's own plugin options (src/relay/stream.c)."""
        if plugin == "wal2json":
            return ["format-version=2", "include-xids=1", "include-lsn=1", "include-timestamp=1", "include-typmod=0",
                    f"add-tables=public.{self.table}", "add-msg-prefixes=outboxd,outboxd.event"]
        return ["proto_version=1", f"publication_names={self.opub}", "messages=true"]

    def slot_reader(self, slot, end_lsn, plugin, n):
        """The decoding limit: build/bench_slot_reader receives and acknowledges
        the slot up to end_lsn and does nothing else."""
        cmd = [os.path.join(ROOT, "build", "bench_slot_reader"), "--dsn", self.rel, "--slot", slot, "--end-lsn", end_lsn]
        for o in self.reader_options(plugin):
            cmd += ["--option", o]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.a.drain_timeout)
        if r.returncode != 0:
            raise RuntimeError(f"bench_slot_reader on {slot} failed ({r.returncode}): {r.stderr[-2000:]}")
        x = json.loads(r.stdout)
        wall = x["t_last_data"] - x["t_start"]
        steady = x["t_last_data"] - x["t_first_data"]
        return {"events": n, "messages": x["messages"], "bytes": x["bytes"], "wall_s": round(wall, 3),
                "events_per_s": round(n / wall), "startup_s": round(x["t_first_data"] - x["t_start"], 3),
                "steady_s": round(steady, 3), "steady_events_per_s": round(n / steady) if steady > 0 else None,
                "cpu_s": x["cpu_s"], "cpu_s_per_100k": round(x["cpu_s"] / n * 1e5, 3),
                "peak_rss_mib": round(x["peak_rss_kb"] / 1024, 1)}

    def drain(self):
        n = self.a.rows
        slots = {"recv_w2j": (f"{self.id}_recv_w2j", "wal2json"), "recv_pgo": (f"{self.id}_recv_pgo", "pgoutput"),
                 "outboxd": (f"{self.id}_obx_drain", "wal2json"),
                 "outboxd_pgoutput": (f"{self.id}_obxp_drain", "pgoutput")}
        for name, plugin in slots.values():
            self.create_slot(name, plugin)
        end_lsn = self.write_backlog()
        self.res["params"]["backlog_end_lsn"] = end_lsn
        d = self.res["drain"]

        log("decoding limits: the slot reader on wal2json and on pgoutput (outboxd's options)")
        d["limit_wal2json"] = self.slot_reader(slots["recv_w2j"][0], end_lsn, "wal2json", n)
        d["limit_pgoutput"] = self.slot_reader(slots["recv_pgo"][0], end_lsn, "pgoutput", n)

        log("outboxd: drain until the slot confirms the backlog's end LSN")
        d["outboxd"] = self.drain_outboxd(slots["outboxd"][0], end_lsn)
        log("outboxd, decoder = pgoutput: drain until the slot confirms the backlog's end LSN")
        d["outboxd_pgoutput"] = self.drain_outboxd(slots["outboxd_pgoutput"][0], end_lsn, "outboxd_pgoutput",
                                                   decoder="pgoutput")

    def drain_outboxd(self, slot, end_lsn, system="outboxd", binary=None, decoder="wal2json"):
        n = self.a.rows
        p = self.start_outboxd(slot, "drain", system, binary, decoder)
        t_confirmed = None
        with psycopg.connect(self.rel, autocommit=True) as c:
            deadline = time.time() + self.a.drain_timeout
            while time.time() < deadline:
                p.check()
                ok = c.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                               "WHERE slot_name = %s", (end_lsn, slot)).fetchone()
                if ok and ok[0]:
                    t_confirmed = time.time()
                    break
                p.mem()
                time.sleep(0.02)
        if t_confirmed is None:
            raise RuntimeError(f"{system} did not confirm {end_lsn} within {self.a.drain_timeout} s")
        cpu, mem = p.cpu(), p.mem()
        self.stop(p)
        row = self.drain_row(n, None, t_confirmed - p.t_start, cpu, mem["VmHWM"], t_start=p.t_start)
        row["peak_anon_mib"] = round(p.max_anon_kb / 1024, 1)
        return row

    def drain_row(self, n, wall, confirmed, cpu, rss_kb, t_start=None):
        row = {"events": n, "cpu_s": round(cpu, 3), "cpu_s_per_100k": round(cpu / n * 1e5, 3),
               "peak_rss_mib": round(rss_kb / 1024, 1)}
        if wall is not None:
            row.update(wall_s=round(wall, 3), events_per_s=round(n / wall))
        if confirmed is not None:
            row.update(confirmed_s=round(confirmed, 3), confirmed_events_per_s=round(n / confirmed))
        if t_start is not None:
            row["_t_start"] = t_start
        return row

    def drain_from_topic(self, system, section="drain", agg="drain"):
        """First and last LogAppendTime of the drained records: acked throughput."""
        row = self.res[section][system]
        ts = [int(line) for line in self.kafka.read(self.topic(system, agg), "%T\n") if line.strip()]
        t_start = row.pop("_t_start")
        if not ts:
            row["records_in_topic"] = 0
            return
        first, last = min(ts) / 1000, max(ts) / 1000
        n = row["events"]
        row.update(records_in_topic=len(ts), startup_s=round(first - t_start, 3),
                   wall_s=round(last - t_start, 3), events_per_s=round(n / (last - t_start)),
                   steady_s=round(last - first, 3),
                   steady_events_per_s=round(n / (last - first)) if last > first else None)

    # -------------------------------------------------------- phase 2: latency
    def run_loadgen(self, aggtype, step, rate, seconds, commits):
        cmd = [os.path.join(ROOT, "build", "bench_loadgen"), "--dsn", self.app, "--table", self.table,
               "--aggtype", aggtype, "--step", str(step), "--rate", str(rate), "--seconds", str(seconds),
               "--batch", str(self.batch_for(rate)), "--pad", str(self.a.pad), "--out", commits,
               "--connections", str(self.a.connections)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def step_name(self, rate, rep):
        return f"{self.rate_name(rate)}-{rep}"

    def latency(self, system, base, reps=1, binary=None, slot=None):
        """Fixed-rate steps on a fresh slot, repetitions interleaved (1k 10k 30k
        1k ...); row ids are unique per (system, step) since every system
        writes to the same table. A/B mode passes each binary and its slot."""
        debezium = system == "debezium"
        slot = slot or f"{self.id}_{'dbz' if debezium else 'obx'}_lat"
        self.create_slot(slot, "pgoutput" if debezium else "wal2json")
        p = self.start_debezium(slot, "latency") if debezium else self.start_outboxd(slot, "latency", system, binary)
        t_ready = self.wait_streaming(p, slot)
        log(f"{system}: streaming after {t_ready:.1f} s; warm-up {self.a.warmup} s at 1k/s")
        # One topic for the warm-up and every step (the step is in each row's
        # id): the first events of a new topic wait ~50 ms for its partitions'
        # leaders, a one-time cost that is not steady latency. Latency needs the
        # broker's append time, so it must be a topic the run created.
        topic, total = self.topic(system, "lat"), 0
        if topic not in self.topics:
            raise RuntimeError(f"topic {topic} was not created by the run (LogAppendTime)")
        if self.a.warmup > 0:
            lg = self.lg = self.run_loadgen("lat", base, 1000, self.a.warmup,
                                            os.path.join(self.outdir, f"{system}-warm.commits"))
            out, err = lg.communicate()
            if lg.returncode != 0:
                raise RuntimeError(f"load generator failed ({lg.returncode}): {err[-2000:]}")
            total = json.loads(out)["rows"]
            self.wait_count(p, topic, total, 120)
        steps = self.res["latency"][system] = {}
        for rep in range(1, reps + 1):
            for i, rate in enumerate(self.a.rates, start=1):
                name = self.step_name(rate, rep)
                commits = os.path.join(self.outdir, f"{system}-{name}.commits")
                log(f"{system}: {rate} events/s for {self.a.seconds} s (repetition {rep})")
                # A checkpoint forced now rather than one due mid-step: a 30k/s
                # step writes ~0.3 GB of WAL, and max_wal_size's checkpoint
                # stalled commits for 100-150 ms (the generator's lag showed it).
                self.sql(self.super, "CHECKPOINT")
                cpu0, load0, ticks0 = p.cpu(), loadavg(), cpu_ticks()
                lg = self.lg = self.run_loadgen("lat", base + rep * 10 + i, rate, self.a.seconds, commits)
                while lg.poll() is None:
                    p.check()
                    p.mem()
                    time.sleep(0.25)
                out, err = lg.communicate()
                if lg.returncode != 0:
                    raise RuntimeError(f"load generator failed ({lg.returncode}): {err[-2000:]}")
                g = json.loads(out)
                t_gen_end = time.time()
                total += g["rows"]
                self.wait_count(p, topic, total, self.a.step_timeout, every=0.25)
                catch_up = time.time() - t_gen_end
                cpu = p.cpu() - cpu0
                p.mem()
                lag = g["lag_ms"]
                steps[name] = {"target_rate": rate, "rep": rep, "achieved_rate": g["achieved_rate"],
                               "rows": g["rows"], "rows_per_txn": g["batch"], "loadgen_lag_ms": lag,
                               "loadgen_commit_ms": g.get("commit_ms"),
                               # p99, not max: a single commit stall of the
                               # server (WAL fsync) lags the max on any
                               # generator; it bunches a few ms of events, while
                               # a p99 over the limit means the offered load
                               # itself was not the rate.
                               "valid": lag["p99"] <= self.a.max_lag_ms,
                               "catch_up_after_load_s": round(catch_up, 2), "cpu_s": round(cpu, 3),
                               "cpu_s_per_100k": round(cpu / g["rows"] * 1e5, 3), "machine_busy": busy_since(ticks0),
                               "loadavg_before": load0, "loadavg_after": loadavg(),
                               "_commits": commits, "_step": base + rep * 10 + i}
                if not steps[name]["valid"]:
                    log(f"{system} {name}: INVALID step, the load generator's p99 lag was {lag['p99']} ms "
                        f"(> {self.a.max_lag_ms} ms)")
        mem = p.mem()
        self.stop(p)
        self.res["memory"][system] = {"steady_peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
                                      "steady_peak_anon_mib": round(p.max_anon_kb / 1024, 1),
                                      "rss_at_end_mib": round(mem["VmRSS"] / 1024, 1),
                                      "startup_to_streaming_s": round(t_ready, 2)}
        self.drop_slot(slot)

    def latency_from_topic(self, system):
        """One read of the system's latency topic; records go to their step by
        the step number in their id (the warm-up's are counted apart)."""
        steps = {st["_step"]: st for st in self.res["latency"][system].values()}
        commit = {k: {} for k in steps}
        for k, st in steps.items():
            with open(st.pop("_commits")) as f:
                for line in f:
                    s, t = line.split()
                    commit[k][int(s)] = float(t)
        lat = {k: [] for k in steps}
        seen = {k: set() for k in steps}
        dup = dict.fromkeys(steps, 0)
        foreign = 0
        for line in self.kafka.read(self.topic(system, "lat"), "%T %h\n"):
            ts, _, hdrs = line.rstrip("\n").partition(" ")
            m = re.search(r"(?:^|,)id=([0-9a-f]{8})-0000-4000-8000-([0-9a-f]{12})", hdrs)
            k = int(m.group(1), 16) if m else None
            if k not in steps:
                foreign += 1
                continue
            seq = int(m.group(2), 16)
            if seq in seen[k]:
                dup[k] += 1
                continue
            seen[k].add(seq)
            lat[k].append(int(ts) - commit[k][seq] * 1000)
        for k, st in steps.items():
            xs = sorted(lat[k])
            st.update(received=len(seen[k]), missing=len(commit[k]) - len(seen[k]), duplicates=dup[k])
            for q in (50, 95, 99):
                v = percentile(xs, q)
                st[f"p{q}_ms"] = round(v, 1) if v is not None else None
            st["max_ms"] = round(xs[-1], 1) if xs else None
            st["mean_ms"] = round(sum(xs) / len(xs), 1) if xs else None
        self.res["latency_topic_other_records"] = self.res.get("latency_topic_other_records", 0) + foreign

    # -------------------------------------------------------- A/B mode
    def drop_slot(self, name):
        """A/B mode drops each slot once used: a dozen idle slots would pin WAL."""
        with psycopg.connect(self.rel, autocommit=True) as c:
            for _ in range(50):
                try:
                    c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE slot_name = %s", (name,))
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.2)
        self.slots.remove(name)

    def run_unit(self, i, system, rnd, label, binary):
        log(f"=== {system} ({binary}), round {rnd}")
        limit = "limit" in self.a.only
        sl = {"recv": f"{self.id}_u{i}_recv", "drain": f"{self.id}_u{i}_drain"}
        if limit:
            self.create_slot(sl["recv"], "wal2json")
        self.create_slot(sl["drain"], "wal2json")
        end_lsn = self.write_backlog()
        unit = {"system": system, "round": rnd, "label": label, "binary": binary,
                "version": binary_version(binary), "backlog_end_lsn": end_lsn}
        with open("/proc/loadavg") as f:
            unit["loadavg_at_start"] = f.read().split()[:3]
        if limit:
            log("decoding limit: the slot reader on wal2json (outboxd's options)")
            unit["limit"] = self.slot_reader(sl["recv"], end_lsn, "wal2json", self.a.rows)
            self.drop_slot(sl["recv"])
        log(f"{system}: drain until the slot confirms the backlog's end LSN")
        self.res["drain"][system] = self.drain_outboxd(sl["drain"], end_lsn, system, binary)
        self.drop_slot(sl["drain"])
        self.latency(system, base=100 * (i + 1), binary=binary, slot=f"{self.id}_u{i}_lat")
        return unit

    def run_ab(self):
        self.setup()
        units = [self.run_unit(i, *u) for i, u in enumerate(self.units)]
        log("reading the topics back (append timestamps, event ids)")
        for u in units:
            s = u["system"]
            self.drain_from_topic(s)
            self.latency_from_topic(s)
            u.update(drain=self.res["drain"][s], latency=self.res["latency"][s], memory=self.res["memory"][s])
        self.res["rounds"] = units
        del self.res["drain"], self.res["latency"], self.res["memory"]
        self.res["params"]["only"] = sorted(self.a.only)
        self.res["params"]["binaries"] = self.bins
        return self.finish()

    # -------------------------------------------------------- run
    def finish(self):
        with open("/proc/loadavg") as f:
            self.res["environment"]["loadavg_at_end"] = f.read().split()[:3]
        restarted = [k for k, v in self.services().items() if v != self.services0[k]]
        self.res["environment"]["services_restarted_during_run"] = restarted
        if restarted:
            log(f"WARNING: {restarted} changed during the run (restarted by someone else?): numbers are not valid")
        self.res["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return self.res

    def run(self):
        """A/B mode or the decoders mode; the full run is bench/full.py."""
        if self.ab:
            return self.run_ab()
        self.setup()
        self.drain()
        for system in ("outboxd", "outboxd_pgoutput"):
            self.drain_from_topic(system)
        self.decoder_ratios()
        self.res["decoders"] = True
        return self.finish()

    def decoder_ratios(self):
        """Issue 14's targets: outboxd on pgoutput against pgoutput's limit (>= 0.9)
        and against outboxd on wal2json (>= 1.3); drain rates start to last ack."""
        d = self.res["drain"]
        po, ow, lim = (d[k].get("events_per_s") for k in ("outboxd_pgoutput", "outboxd", "limit_pgoutput"))
        self.res["decoder_ratios"] = {
            "outboxd_pgoutput_vs_pgoutput_limit": round(po / lim, 3) if po and lim else None,
            "outboxd_pgoutput_vs_outboxd_wal2json": round(po / ow, 3) if po and ow else None,
            "outboxd_wal2json_vs_wal2json_limit": round(ow / d["limit_wal2json"]["events_per_s"], 3)
            if ow else None}
        log(f"decoder ratios: {self.res['decoder_ratios']}")


SYSTEMS = ("limit", "pgoutput", "outboxd", "debezium")


def ab_mode(a):
    return len(a.outboxd_bin or []) > 1 or a.rounds > 1 or set(a.only) != set(SYSTEMS)


def binary_version(path):
    """`outboxd --version` and the commit of the tree the binary was built in."""
    v = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    tree = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    sha = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    return f"{v} @{sha}" if sha else v


def label_path(s):
    label, sep, path = s.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError("expected LABEL=PATH")
    if not re.fullmatch(r"[a-z0-9]+", label):
        raise argparse.ArgumentTypeError("LABEL: lower-case letters and digits (it names topics)")
    return label, os.path.abspath(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-id", required=True, help="prefix of PG object names, e.g. obxbench_1795690000")
    ap.add_argument("--stamp", required=True, help="UTC timestamp naming the results")
    ap.add_argument("--work-dir", required=True, help="logs and commit-time files")
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--pad", type=int, default=600)
    ap.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000, 30000])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every figure (full run)")
    ap.add_argument("--max-lag-ms", type=float, default=5.0,
                    help="a latency step in which the load generator sent more than 1 %% of its transactions more than "
                         "this late (p99 lag) is invalid")
    ap.add_argument("--connections", type=int, default=16,
                    help="load generator connections (16 absorb the server's short commit stalls)")
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--xmx", default="512m")
    ap.add_argument("--pg-port", type=int, default=55432)
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--outboxd", default=os.path.join(ROOT, "build", "outboxd"))
    ap.add_argument("--java-cp", required=True)
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--step-timeout", type=float, default=180)
    ap.add_argument("--keep-topics", action="store_true")
    ap.add_argument("--decoders", action="store_true",
                    help="the backlog drain only, both decoders: the two limits and outboxd on each (no Debezium, "
                         "no latency steps); prints issue 14's ratios")
    ap.add_argument("--only", type=lambda s: s.split(","), default=list(SYSTEMS),
                    help=f"systems to run, of {','.join(SYSTEMS)}; anything but all of them is A/B mode, "
                         "which runs limit and outboxd only")
    ap.add_argument("--outboxd-bin", type=label_path, action="append", metavar="LABEL=PATH",
                    help="an outboxd binary to measure, under LABEL (repeat for A/B: old=... new=...)")
    ap.add_argument("--rounds", type=int, default=1, help="A/B mode: rounds of every binary, alternating")
    a = ap.parse_args()
    # Rows are written in transactions of 1000 and rates divide by --rows;
    # step ids are base + rep * 10 + rate index.
    if a.rows < 1000 or a.rows % 1000:
        ap.error("--rows: a positive multiple of 1000")
    if not 1 <= a.reps <= 9 or not 1 <= len(a.rates) <= 9 or len(set(a.rates)) != len(a.rates) or min(a.rates) <= 0:
        ap.error("--reps 1-9, --rates 1-9 distinct positive rates")
    if not set(a.only) <= set(SYSTEMS):
        ap.error(f"--only: unknown system in {a.only}")
    if ab_mode(a):
        if a.outboxd_bin is None:
            a.outboxd_bin = [("outboxd", os.path.abspath(a.outboxd))]
        if not set(a.only) <= {"limit", "outboxd"} or "outboxd" not in a.only:
            ap.error("A/B mode (--rounds, several --outboxd-bin, --only) measures outboxd and the limit only: "
                     "--only outboxd or --only limit,outboxd")
    elif a.outboxd_bin:
        a.outboxd = a.outboxd_bin[0][1]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ab_mode(a) or a.decoders:
        b = Bench(a)
    else:
        from full import FullBench  # the default run (issue 18)
        b = FullBench(a)
    try:
        res = b.run()
    except Stop as e:
        log(f"stopped: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleanup: stopping relays, dropping slots, publication, table" +
            ("" if a.keep_topics else ", topics"))
        b.cleanup()
    with open(a.json_out, "w") as f:
        json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
