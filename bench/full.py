"""The full run of bench/run.sh (issue 18): every figure from --reps repetitions,
reported as min / median / max, and each half measured against its own limit.

  drain     one backlog of N rows; per repetition, each system drains it from its
            own slot (all created before the writes): the decoding limit of
            wal2json and of pgoutput (build/bench_slot_reader: receives and
            acknowledges, nothing else), outboxd on each decoder, Debezium.
  apply     bench/apply_bench.py over the first outboxd drain's topic: the
            replica's write limit (apply's own upsert run from SQL), outboxd
            apply, the naive row-at-a-time consumer.
  messages  N events written with outbox_emit() (logical messages, no table
            row), drained the same way (no Debezium: its outbox router reads
            tables).
  latency   per relay one process on a fresh slot; the C load generator
            (build/bench_loadgen) holds each rate for S seconds, repetitions
            interleaved (1k 10k 30k, 1k 10k 30k, ...). A step whose generator
            lagged more than --max-lag-ms behind its schedule (p99 of its
            transactions) is invalid: its
            latency is kept in the JSON but never enters a median.
"""
import json
import os
import statistics
import subprocess
import time

from bench import HERE, Bench, busy_since, cpu_ticks, loadavg, log

SHORT = {"limit_wal2json": "lw", "limit_pgoutput": "lp", "outboxd": "ow", "outboxd_pgoutput": "op", "debezium": "dz"}
PLUGIN = {"limit_wal2json": "wal2json", "limit_pgoutput": "pgoutput", "outboxd": "wal2json",
          "outboxd_pgoutput": "pgoutput", "debezium": "pgoutput"}
DRAIN_SYSTEMS = ["limit_wal2json", "limit_pgoutput", "outboxd", "outboxd_pgoutput", "debezium"]
MESSAGE_SYSTEMS = ["limit_wal2json", "limit_pgoutput", "outboxd", "outboxd_pgoutput"]
LATENCY_SYSTEMS = ["outboxd", "debezium"]


def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


class FullBench(Bench):
    def __init__(self, a):
        super().__init__(a)
        self.reps = a.reps
        self.res["params"].update(reps=a.reps, max_loadgen_lag_ms=a.max_lag_ms, loadgen_connections=a.connections)
        self.res.update(drain={}, messages={}, latency={}, memory={}, apply=None)

    @staticmethod
    def label(system, rep):
        return f"{system}-{rep}"

    def topic_list(self):
        t = []
        for rep in range(1, self.reps + 1):
            t += [self.topic(self.label(s, rep), "drain") for s in ("outboxd", "outboxd_pgoutput", "debezium")]
            t += [self.topic(self.label(s, rep), "mdrain") for s in ("outboxd", "outboxd_pgoutput")]
        t += [self.topic(s, "lat") for s in LATENCY_SYSTEMS]
        return t

    def drain_debezium(self, slot, system):
        n = self.a.rows
        p = self.start_debezium(slot, "drain", system)
        deadline = time.time() + self.a.drain_timeout
        topic = self.topic(system, "drain")
        while time.time() < deadline:
            p.check()
            p.mem()
            if self.kafka.count(topic) >= n:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"Debezium did not deliver {n} records within {self.a.drain_timeout} s")
        cpu, mem = p.cpu(), p.mem()
        self.stop(p)
        row = self.drain_row(n, None, None, cpu, mem["VmHWM"], t_start=p.t_start)
        row["peak_anon_mib"] = round(p.max_anon_kb / 1024, 1)
        return row

    # ------------------------------------------------------------ backlogs
    def write_messages(self):
        n, pad = self.a.rows, self.a.pad
        log(f"writing the message backlog: {n} outbox_emit() events in transactions of 1000")
        t = time.time()
        self.sql(self.app, f"""DO $$ BEGIN FOR t IN 0..({n} / 1000 - 1) LOOP
          PERFORM outbox_emit('mdrain', 'agg-' || (g % 5000), 'Updated',
                  jsonb_build_object('n', g, 'name', 'Zoë "q" ' || g, 'pad', repeat('x', {pad})), g)
            FROM generate_series(t * 1000, t * 1000 + 999) g;
          COMMIT; END LOOP; END $$""")
        end_lsn = self.sql(self.rel, "SELECT pg_current_wal_lsn()::text", fetch=True)[0][0]
        self.sql(self.super, "CHECKPOINT")
        log(f"message backlog written in {time.time() - t:.1f} s, end LSN {end_lsn}")
        return end_lsn

    def drain_phase(self, section, agg, systems, write):
        """Every system drains the same backlog once per repetition, in turn."""
        slots = {(s, rep): f"{self.id}_{agg[0]}{rep}_{SHORT[s]}" for rep in range(1, self.reps + 1) for s in systems}
        for (s, _), name in slots.items():
            self.create_slot(name, PLUGIN[s])
        end_lsn = write()
        self.res["params"][f"{section}_end_lsn"] = end_lsn
        out = self.res[section]
        for rep in range(1, self.reps + 1):
            # Rotated each repetition, so no system always runs first (right
            # after the backlog's checkpoint or the JVM's exit).
            k = (rep - 1) % len(systems)
            for s in systems[k:] + systems[:k]:
                slot, label = slots[(s, rep)], self.label(s, rep)
                self.settle()
                log(f"{section}, repetition {rep}: {s}")
                load0 = loadavg()
                if s.startswith("limit_"):
                    row = self.slot_reader(slot, end_lsn, PLUGIN[s], self.a.rows)
                elif s == "debezium":
                    row = self.drain_debezium(slot, label)
                else:
                    row = self.drain_outboxd(slot, end_lsn, label, decoder=PLUGIN[s])
                row.update(system=s, rep=rep, loadavg_before=load0, loadavg_after=loadavg())
                out[label] = row
                self.drop_slot(slot)
        for label, row in out.items():
            if "_t_start" in row:
                self.drain_from_topic(label, section, agg)

    @staticmethod
    def settle(busy_max=0.25, window=0.5, timeout=10.0):
        """Waits (at most timeout s) until the machine's CPU use over a short
        window drops below busy_max: the previous system's exit (a JVM,
        Kafka flushing its log) must not fall into the next one's figures."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            t0 = cpu_ticks()
            time.sleep(window)
            if busy_since(t0) < busy_max:
                return

    # ------------------------------------------------------------ apply
    def apply_phase(self):
        topic = self.topic(self.label("outboxd", 1), "drain")
        cmd = ["python3", os.path.join(HERE, "apply_bench.py"), "--pg-port", str(self.a.pg_port),
               "--brokers", self.a.brokers, "--topic", topic, "--events", str(self.a.rows),
               "--source-table", self.table, "--run-id", self.id, "--work-dir", self.outdir,
               "--reps", str(self.reps)]
        log("apply: write limit from SQL, outboxd apply, row-at-a-time (bench/apply_bench.py)")
        # Popen + self.lg: a Ctrl-C reaches it as SIGTERM (cleanup), so it
        # drops its tables and stops its consumers itself.
        r = self.lg = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out, _ = r.communicate(timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"bench/apply_bench.py failed ({r.returncode})")
        self.res["apply"] = json.loads(out)

    # ------------------------------------------------------------ summaries
    def summarize(self):
        s = self.res["summary"] = {"drain": {}, "messages": {}, "latency": {}, "ratios": {}}
        for section in ("drain", "messages"):
            rows = self.res[section]
            for system in {r["system"] for r in rows.values()}:
                mine = [r for r in rows.values() if r["system"] == system]
                s[section][system] = {k: spread([r.get(k) for r in mine])
                                      for k in ("events_per_s", "steady_events_per_s", "cpu_s_per_100k",
                                                "peak_rss_mib", "startup_s")}
        for system, steps in self.res["latency"].items():
            for rate in self.a.rates:
                mine = [st for st in steps.values() if st["target_rate"] == rate]
                valid = [st for st in mine if st["valid"]]
                entry = {k: spread([st.get(k) for st in valid]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
                entry.update(achieved_rate=spread([st["achieved_rate"] for st in mine]),
                             loadgen_lag_max_ms=spread([st["loadgen_lag_ms"]["max"] for st in mine]),
                             loadgen_lag_p99_ms=spread([st["loadgen_lag_ms"]["p99"] for st in mine]),
                             catch_up_after_load_s=spread([st["catch_up_after_load_s"] for st in mine]),
                             cpu_s_per_100k=spread([st["cpu_s_per_100k"] for st in mine]),
                             machine_busy=spread([st["machine_busy"] for st in mine]),
                             missing=sum(st.get("missing", 0) for st in mine),
                             duplicates=sum(st.get("duplicates", 0) for st in mine),
                             valid=len(valid), reps=len(mine))
                s["latency"].setdefault(system, {})[self.rate_name(rate)] = entry

        def per_rep(section, num, den, key="steady_events_per_s"):
            xs = []
            for rep in range(1, self.reps + 1):
                a = self.res[section].get(self.label(num, rep), {}).get(key)
                b = self.res[section].get(self.label(den, rep), {}).get(key)
                xs.append(round(a / b, 3) if a and b else None)
            return {"per_rep": xs, **(spread(xs) or {})}
        r = s["ratios"]
        r["drain_outboxd_vs_wal2json_limit"] = per_rep("drain", "outboxd", "limit_wal2json")
        r["drain_outboxd_pgoutput_vs_pgoutput_limit"] = per_rep("drain", "outboxd_pgoutput", "limit_pgoutput")
        r["drain_outboxd_vs_debezium"] = per_rep("drain", "outboxd", "debezium")
        r["drain_outboxd_pgoutput_vs_debezium"] = per_rep("drain", "outboxd_pgoutput", "debezium")
        r["messages_outboxd_vs_wal2json_limit"] = per_rep("messages", "outboxd", "limit_wal2json")
        r["messages_outboxd_pgoutput_vs_pgoutput_limit"] = per_rep("messages", "outboxd_pgoutput", "limit_pgoutput")
        # The limit must bound every reader in every repetition, or it is no limit.
        bound = []
        for section in ("drain", "messages"):
            for rep in range(1, self.reps + 1):
                for plugin in ("wal2json", "pgoutput"):
                    lim = self.res[section].get(self.label(f"limit_{plugin}", rep), {}).get("steady_events_per_s")
                    for sysname in ("outboxd" if plugin == "wal2json" else "outboxd_pgoutput",) + (
                            ("debezium",) if plugin == "pgoutput" else ()):
                        v = self.res[section].get(self.label(sysname, rep), {}).get("steady_events_per_s")
                        if lim and v:
                            bound.append({"section": section, "rep": rep, "plugin": plugin, "system": sysname,
                                          "limit": lim, "value": v, "bounded": v <= lim * 1.02})
        r["limit_is_upper_bound"] = bound
        mem = {}
        for system in ("outboxd", "debezium"):
            drains = [self.res["drain"][self.label(system, rep)]["peak_rss_mib"] for rep in range(1, self.reps + 1)]
            mem[system] = max(statistics.median(drains), self.res["memory"][system]["steady_peak_rss_mib"])
            self.res["memory"][system]["drain_peak_rss_mib"] = spread(drains)
        r["memory_debezium_vs_outboxd"] = round(mem["debezium"] / mem["outboxd"], 2)
        anon = {}
        for system in ("outboxd", "debezium"):
            drains = [self.res["drain"][self.label(system, rep)]["peak_anon_mib"] for rep in range(1, self.reps + 1)]
            anon[system] = max(statistics.median(drains), self.res["memory"][system]["steady_peak_anon_mib"])
            self.res["memory"][system]["drain_peak_anon_mib"] = spread(drains)
        r["private_memory_debezium_vs_outboxd"] = round(anon["debezium"] / max(anon["outboxd"], 0.1), 2)
        lat = s["latency"]
        p99 = {k: (lat[k].get("r10k", {}).get("p99_ms") or {}).get("median") for k in LATENCY_SYSTEMS}
        r["p99_10k_debezium_vs_outboxd"] = round(p99["debezium"] / p99["outboxd"], 2) if all(p99.values()) else None

    # ------------------------------------------------------------ run
    def run(self):
        self.setup()
        self.res["environment"]["cpu_busy_at_start"] = self.sample_busy()
        self.drain_phase("drain", "drain", DRAIN_SYSTEMS, self.write_backlog)
        self.apply_phase()
        self.drain_phase("messages", "mdrain", MESSAGE_SYSTEMS, self.write_messages)
        for k, system in enumerate(LATENCY_SYSTEMS):
            self.latency(system, base=100 * (k + 1), reps=self.reps)
        log("reading the latency topics back (append timestamps, event ids)")
        for system in LATENCY_SYSTEMS:
            self.latency_from_topic(system)
        self.summarize()
        return self.finish()

    @staticmethod
    def sample_busy(seconds=2.0):
        """The machine's CPU use over a short window, before anything of ours runs."""
        t0 = cpu_ticks()
        time.sleep(seconds)
        return busy_since(t0)
