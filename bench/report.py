#!/usr/bin/env python3
"""Turns one bench/bench.py result into the printed table, the PNG plot and
docs/benchmarks.md (from bench/benchmarks.md.in). Adds the machine and versions
to the JSON (bench/report_full.py: tables, targets of issue 18, plot). Targets
are reported, never asserted.

usage: report.py RESULT.json PNG_OUT DOC_OUT [--command "bench/run.sh ..."]
       report.py --verdicts R1.json R2.json R3.json   (targets of several runs side by side)

An A/B result (bench.py --outboxd-bin/--rounds/--only) only gets its table
printed and its JSON completed: no plot, docs/benchmarks.md is left alone.
`report.py --ab A.json [B.json ...]` prints one table over several A/B results.
"""
import argparse
import glob
import json
import os
import platform
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(pg_port):
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1), "cpu_model": cpu,
            "kernel": platform.release(), "os": sh("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME")}


def debezium_version():
    with open(os.path.join(HERE, "debezium", "pom.xml")) as f:
        m = re.search(r"<version.debezium>([^<]+)</version.debezium>", f.read())
    return m.group(1) if m else "?"


def versions(pg_port, java_cp):
    run_dir = os.environ.get("OBX_RUN_DIR", "/tmp/outboxd-run")
    kafka = sorted(glob.glob(os.path.join(run_dir, "kafka", "libs", "kafka_2.13-*.jar")))
    libdir = java_cp.split(":")[-1].rstrip("*")
    clients = sorted(glob.glob(os.path.join(libdir, "kafka-clients-*.jar")))
    pgjdbc = sorted(glob.glob(os.path.join(libdir, "postgresql-*.jar")))
    java = sh("sh", "-c", "java -version 2>&1 | head -n1")
    dirty = "+dirty" if sh("git", "-C", ROOT, "status", "--porcelain", "--", "src") else ""
    return {
        "outboxd": sh(os.path.join(ROOT, "build", "outboxd"), "--version") + " @" +
                   sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD") + dirty,
        "postgresql": sh("psql", f"host=127.0.0.1 port={pg_port} dbname=app user=app", "-Atc", "SHOW server_version"),
        "wal2json": sh("dpkg-query", "-W", "-f=${Version}", "postgresql-15-wal2json"),
        "librdkafka": sh("dpkg-query", "-W", "-f=${Version}", "librdkafka1"),
        "kafka_broker": re.sub(r".*kafka_2\.13-(.*)\.jar", r"\1", kafka[0]) if kafka else "?",
        "debezium": debezium_version() + " (embedded engine, PostgreSQL connector, pgoutput)",
        "debezium_kafka_clients": re.sub(r".*kafka-clients-(.*)\.jar", r"\1", clients[0]) if clients else "?",
        "pgjdbc": re.sub(r".*postgresql-(.*)\.jar", r"\1", pgjdbc[0]) if pgjdbc else "?",
        "java": java.replace('"', ""),
        "python": platform.python_version(),
    }


def fmt(v, digits=0, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float) and digits == 0:
        v = round(v)
    return f"{v:,.{digits}f}{unit}" if isinstance(v, (int, float)) else str(v)


AB_METRICS = [  # (key in a unit, column, digits)
    ("limit_eps", "limit ev/s", 0), ("drain_eps", "drain ev/s (start to last ack)", 0),
    ("ratio", "drain / limit", 2), ("steady_eps", "steady ev/s", 0), ("confirmed_eps", "to slot confirmed ev/s", 0),
    ("drain_cpu", "drain CPU s / 100k", 2), ("drain_rss", "drain peak RSS MiB", 1),
    ("p50_1k", "1k/s p50 ms", 1), ("p99_1k", "1k/s p99 ms", 1), ("p50_10k", "10k/s p50 ms", 1),
    ("p99_10k", "10k/s p99 ms", 1), ("ach_10k", "10k/s achieved", 0), ("steady_rss", "steady RSS MiB", 1),
]


def ab_values(u):
    d, lat, lim = u["drain"], u["latency"], u.get("limit", {})
    v = {"limit_eps": lim.get("events_per_s"), "drain_eps": d.get("events_per_s"),
         "steady_eps": d.get("steady_events_per_s"), "confirmed_eps": d.get("confirmed_events_per_s"),
         "drain_cpu": d.get("cpu_s_per_100k"), "drain_rss": d.get("peak_rss_mib"),
         "steady_rss": u["memory"]["steady_peak_rss_mib"]}
    v["ratio"] = v["drain_eps"] / v["limit_eps"] if v["limit_eps"] and v["drain_eps"] else None
    for name, st in lat.items():
        k = name[1:].split("-")[0]  # r1k-1 -> 1k
        v.update({f"p50_{k}": st.get("p50_ms"), f"p99_{k}": st.get("p99_ms"), f"ach_{k}": st.get("achieved_rate")})
    return v


def ab_tables(r, results=None):
    """r: one A/B result; results: several, shown in one table (column `bench`)."""
    results = results or [r]
    units = [dict(u, bench=x["run_id"]) for x in results for u in x["rounds"]]
    many = len(results) > 1
    t = [f"**Every run, in the order run** ({r['params']['backlog_rows']:,}-row backlog per run; "
         f"{r['params']['step_seconds']:.0f} s per fixed-rate step)\n"]
    t.append(("| bench " if many else "") + "| run | binary | load avg | " + " | ".join(c for _, c, _ in AB_METRICS) + " | lat. missing / dup |")
    t.append(("|---" if many else "") + "|---|---|---:|" + "---:|" * len(AB_METRICS) + "---|")
    per_label = {}
    for u in units:
        v = ab_values(u)
        per_label.setdefault(u["label"], []).append(v)
        lost = " ".join(f"{st['missing']}/{st['duplicates']}" for st in u["latency"].values())
        t.append((f"| {u['bench']} " if many else "") + f"| {u['system']} | {u['version']} | {u['loadavg_at_start'][0]} | "
                 + " | ".join(fmt(v.get(k), dg) for k, _, dg in AB_METRICS) + f" | {lost} |")
    t.append("")
    labels = list(per_label)
    t.append("**Per binary: mean (min - max) over its runs; difference of the means**\n")
    t.append("| metric | " + " | ".join(labels) + " | " +
             (f"{labels[-1]} vs {labels[0]} | ranges overlap |" if len(labels) > 1 else ""))
    t.append("|---|" + "---:|" * len(labels) + ("---:|---|" if len(labels) > 1 else ""))
    for k, col, dg in AB_METRICS:
        cells, stats = [], []
        for lb in labels:
            xs = [v[k] for v in per_label[lb] if v.get(k) is not None]
            if not xs:
                cells.append("n/a")
                stats.append(None)
                continue
            m = sum(xs) / len(xs)
            stats.append((m, min(xs), max(xs)))
            cells.append(f"{fmt(m, dg)} ({fmt(min(xs), dg)} - {fmt(max(xs), dg)})")
        row = f"| {col} | " + " | ".join(cells) + " |"
        if len(labels) > 1:
            a, b = stats[0], stats[-1]
            if a and b and a[0]:
                overlap = "yes" if b[1] <= a[2] and a[1] <= b[2] else "**no**"
                row += f" {(b[0] - a[0]) / a[0] * 100:+.1f} % | {overlap} |"
            else:
                row += " n/a | n/a |"
        t.append(row)
    return "\n".join(t)


def full_params(r):
    p, env = r["params"], r.get("environment", {})
    return (f"backlog {p['backlog_rows']:,} rows (and as many `outbox_emit()` messages) in transactions of 1000; "
            f"{p['reps']} repetitions of everything; fixed rates {', '.join(f'{x:,}' for x in p['rates'])} events/s "
            f"for {p['step_seconds']:.0f} s each (rows per transaction: "
            f"{', '.join(f'{k}/s: {n}' for k, n in p['rows_per_txn'].items())}; load generator "
            f"`build/bench_loadgen` on {p['loadgen_connections']} connections, a step is invalid when its p99 lag was more "
            f"than {p['max_loadgen_lag_ms']} ms behind its schedule), after a {p['warmup_seconds']:.0f} s warm-up at "
            f"1k/s; {p['partitions']} partitions per topic; payload ~{p['payload_pad_bytes']} B of padding in a jsonb "
            f"object; machine CPU busy before the run {env.get('cpu_busy_at_start', 0) * 100:.0f} %")


def main():
    if sys.argv[1:2] == ["--verdicts"]:
        import report_full
        results = []
        for path in sys.argv[2:]:
            with open(path) as f:
                results.append(json.load(f))
        print(report_full.verdicts(results))
        return
    if sys.argv[1:2] == ["--ab"]:
        results = []
        for path in sys.argv[2:]:
            with open(path) as f:
                results.append(json.load(f))
        print(ab_tables(results[0], results))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("png")
    ap.add_argument("doc")
    ap.add_argument("--doc-png", help="path of the PNG as linked from the doc")
    ap.add_argument("--command", default="bench/run.sh")
    ap.add_argument("--pg-port", default="55432")
    ap.add_argument("--java-cp", default="")
    a = ap.parse_args()
    with open(a.result) as f:
        r = json.load(f)
    r["machine"] = machine_info(a.pg_port)
    r["versions"] = versions(a.pg_port, a.java_cp)
    r["command"] = a.command
    if r.get("decoders"):
        with open(a.result, "w") as f:
            json.dump(r, f, indent=2)
        for k, x in r["drain"].items():
            print(f"{k:26} {fmt(x.get('events_per_s')):>10} events/s  CPU s/100k {fmt(x.get('cpu_s_per_100k'), 2)}")
        print("ratios:", json.dumps(r["decoder_ratios"]))
        return
    if "rounds" in r:
        with open(a.result, "w") as f:
            json.dump(r, f, indent=2)
        print(ab_tables(r))
        return
    import report_full  # the default run of bench/run.sh (bench/full.py)
    r["targets"] = report_full.targets(r)
    with open(a.result, "w") as f:
        json.dump(r, f, indent=2)
    table = report_full.tables(r)
    print(table)
    report_full.plot(r, a.png)

    m, v, env = r["machine"], r["versions"], r.get("environment", {})
    with open(os.path.join(HERE, "benchmarks.md.in")) as f:
        doc = f.read()
    subst = {
        "RUN_ID": r["run_id"],
        "COMMAND": a.command,
        "TABLES": table,
        "PLOT": a.doc_png or a.png,
        "RESULT_JSON": os.path.relpath(a.result, ROOT),
        "MACHINE": f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['os']}, "
                   f"Linux {m['kernel']}; PostgreSQL, Kafka, the load generator and the relay under test "
                   f"share these cores",
        "VERSIONS": "\n".join(f"- {k}: {val}" for k, val in v.items()),
        "PARAMS": full_params(r),
        "SERVICES": env.get("services", "?"),
        "NOISE": (f"Load average at start {' '.join(env.get('loadavg_at_start', []))}, at end "
                  f"{' '.join(env.get('loadavg_at_end', []))}; other active replication slots at start: "
                  f"{', '.join(env.get('other_active_slots', [])) or 'none'}"),
    }
    runs = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(a.result)), "*.json"))):
        with open(path) as f:
            x = json.load(f)
        if "summary" in x and "targets" in x and path != os.path.abspath(a.result):
            runs.append(x)
    subst.update(REPS=r["params"]["reps"], LIMITS=report_full.limits_text(r),
                 CONSECUTIVE=report_full.consecutive(runs + [r]))
    for k, val in subst.items():
        doc = doc.replace("{{" + k + "}}", str(val))
    with open(a.doc, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
