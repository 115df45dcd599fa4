#!/usr/bin/env python3
"""Turns one bench/bench.py result into the printed table, the PNG plot and
docs/benchmarks.md (from bench/benchmarks.md.in). Adds the machine and versions
to the JSON. Targets from issue 5 are reported, never asserted.

usage: report.py RESULT.json PNG_OUT DOC_OUT [--command "bench/run.sh ..."]

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
        "debezium": "3.6.1.Final (embedded engine, PostgreSQL connector, pgoutput)",
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


def targets(r):
    d, lat, mem = r["drain"], r["latency"], r["memory"]
    out = []

    def add(name, value, ok, detail):
        out.append({"target": name, "value": value, "met": bool(ok) if ok is not None else None, "detail": detail})

    lim = d["pg_recvlogical_wal2json"]["events_per_s"]
    o, z = d["outboxd"], d["debezium"]
    ratio = o["events_per_s"] / lim
    add("outboxd drain >= 0.9x decoding limit", f"{ratio:.2f}x", ratio >= 0.9,
        f"outboxd {o['events_per_s']:,} ev/s (start to last ack) vs pg_recvlogical+wal2json {lim:,} ev/s; "
        f"to slot confirmation {o.get('confirmed_events_per_s', 0):,} ev/s "
        f"({o.get('confirmed_events_per_s', 0) / lim:.2f}x)")
    if o.get("steady_events_per_s") and z.get("steady_events_per_s"):
        ratio = o["steady_events_per_s"] / z["steady_events_per_s"]
        add("outboxd >= 3x Debezium events/s", f"{ratio:.2f}x", ratio >= 3,
            f"steady drain (first to last ack, start-up excluded): {o['steady_events_per_s']:,} vs "
            f"{z['steady_events_per_s']:,} ev/s; with start-up: {o['events_per_s']:,} vs {z['events_per_s']:,} "
            f"({o['events_per_s'] / z['events_per_s']:.2f}x)")
    top = max(lat["outboxd"], key=lambda k: lat["outboxd"][k]["target_rate"])
    lo, lz = lat["outboxd"][top], lat["debezium"].get(top, {})
    if lo.get("p99_ms") is not None and lz.get("p99_ms") is not None:
        ratio = lz["p99_ms"] / max(lo["p99_ms"], 1.0)
        add(f"p99 at {lo['target_rate'] // 1000}k/s >= 10x lower than Debezium", f"{ratio:.1f}x", ratio >= 10,
            f"outboxd {lo['p99_ms']} ms vs Debezium {lz['p99_ms']} ms (ms resolution: outboxd's p99 counted as >= 1 ms)")
    po = max(mem["outboxd"]["steady_peak_rss_mib"], mem["outboxd"]["drain_peak_rss_mib"])
    pz = max(mem["debezium"]["steady_peak_rss_mib"], mem["debezium"]["drain_peak_rss_mib"])
    ratio = pz / po
    add("memory >= 10x lower", f"{ratio:.1f}x", ratio >= 10,
        f"peak RSS over drain and steady phases: outboxd {po} MiB vs Debezium JVM {pz} MiB")
    add(f"outboxd p99 commit-to-ack <= 15 ms at {lo['target_rate'] // 1000}k/s", fmt(lo.get("p99_ms"), 1, " ms"),
        lo.get("p99_ms") is not None and lo["p99_ms"] <= 15, "commit returned to the client -> broker append time")
    so = mem["outboxd"]["steady_peak_rss_mib"]
    add("outboxd steady RSS <= 32 MB", f"{so} MiB", so <= 32,
        f"VmHWM of the process that ran the fixed-rate steps (after start-up, no backlog); "
        f"drain peak {mem['outboxd']['drain_peak_rss_mib']} MiB")
    return out


def tables(r):
    d, lat, mem = r["drain"], r["latency"], r["memory"]
    n = r["params"]["backlog_rows"]
    t = []
    restarted = r.get("environment", {}).get("services_restarted_during_run")
    if restarted:
        t.append(f"> **WARNING: this run is not valid**: {', '.join(restarted)} changed during the run "
                 "(a service was restarted by someone else); run again.\n")
    t.append(f"**Backlog drain** ({n:,} rows committed before the reader starts, ~{r['params']['payload_pad_bytes']} B payload)\n")
    t.append("| system | events/s (start to last ack) | wall s | start-up s | steady events/s (first to last ack) "
             "| to slot confirmed s | CPU s / 100k | peak RSS MiB |")
    t.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = {"pg_recvlogical_wal2json": "pg_recvlogical + wal2json to /dev/null (decoding limit)",
             "pg_recvlogical_pgoutput": "pg_recvlogical + pgoutput to /dev/null (pgoutput's decoding limit)",
             "outboxd": "outboxd", "debezium": f"Debezium (JVM -Xmx{r['params']['debezium_xmx']})",
             "outboxd_pgoutput": "outboxd, decoder = pgoutput"}
    for k, label in names.items():
        x = d.get(k)
        if x is None:  # a run from before that system was measured
            continue
        t.append(f"| {label} | {fmt(x.get('events_per_s'))} | {fmt(x.get('wall_s'), 2)} | {fmt(x.get('startup_s'), 2)} "
                 f"| {fmt(x.get('steady_events_per_s'))} | {fmt(x.get('confirmed_s'), 2)} "
                 f"| {fmt(x.get('cpu_s_per_100k'), 2)} | {fmt(x.get('peak_rss_mib'), 1)} |")
    t.append("")
    t.append(f"**Commit-to-broker-append latency at fixed rates** ({r['params']['step_seconds']:.0f} s per step, "
             "after a warm-up; ms)\n")
    t.append("| system | target ev/s | achieved ev/s | load gen max lag ms | rows/txn | p50 | p95 | p99 | max "
             "| received / missing / dup | catch-up after load s | CPU s / 100k |")
    t.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for sysname in ("outboxd", "debezium"):
        for name, s in sorted(lat[sysname].items(), key=lambda kv: kv[1]["target_rate"]):
            t.append(f"| {sysname} | {s['target_rate']:,} | {fmt(s['achieved_rate'])} "
                     f"| {fmt(s.get('loadgen_max_behind_ms'))} | {s['rows_per_txn']} "
                     f"| {fmt(s['p50_ms'], 1)} | {fmt(s['p95_ms'], 1)} | {fmt(s['p99_ms'], 1)} | {fmt(s['max_ms'], 1)} "
                     f"| {s['received']:,} / {s['missing']} / {s['duplicates']} | {fmt(s['catch_up_after_load_s'], 2)} "
                     f"| {fmt(s['cpu_s_per_100k'], 2)} |")
    t.append("")
    t.append("**Relay memory**\n")
    t.append("| system | start to streaming s | steady peak RSS MiB (fixed-rate process) | drain peak RSS MiB |")
    t.append("|---|---:|---:|---:|")
    for sysname in ("outboxd", "debezium"):
        m = mem[sysname]
        t.append(f"| {sysname} | {fmt(m['startup_to_streaming_s'], 2)} | {fmt(m['steady_peak_rss_mib'], 1)} "
                 f"| {fmt(m['drain_peak_rss_mib'], 1)} |")
    t.append("")
    t.append("**Targets from issue 5** (reported, not asserted)\n")
    t.append("| target | measured | met | detail |")
    t.append("|---|---:|---|---|")
    for x in r["targets"]:
        met = "n/a" if x["met"] is None else ("met" if x["met"] else "**not met**")
        t.append(f"| {x['target']} | {x['value']} | {met} | {x['detail']} |")
    return "\n".join(t)


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
        k = name[1:]  # r1k -> 1k
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


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"outboxd": "#1f77b4", "debezium": "#d62728"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    lat = r["latency"]
    steps = sorted(lat["outboxd"], key=lambda k: lat["outboxd"][k]["target_rate"])
    qs = ["p50_ms", "p95_ms", "p99_ms", "max_ms"]
    labels, xs = [], []
    width = 0.38
    for i, step in enumerate(steps):
        for j, q in enumerate(qs):
            x = i * (len(qs) + 1) + j
            xs.append(x)
            labels.append(f"{q[:-3]}\n{lat['outboxd'][step]['target_rate'] // 1000}k/s")
            for k, sysname in enumerate(("outboxd", "debezium")):
                v = lat[sysname].get(step, {}).get(q)
                if v is None:
                    continue
                v = max(v, 0.5)
                ax1.bar(x + (k - 0.5) * width, v, width, color=colors[sysname],
                        label=sysname if (i, j) == (0, 0) else None)
                ax1.text(x + (k - 0.5) * width, v * 1.05, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax1.set_yscale("log")
    ax1.set_xticks(xs)
    ax1.set_xticklabels(labels, fontsize=8)
    ax1.set_ylabel("commit to broker append, ms (log)")
    ax1.set_title("Latency at fixed rates")
    ax1.legend()

    d = r["drain"]
    bars = [("wal2json\ndecoding limit", d["pg_recvlogical_wal2json"]["events_per_s"], None, "#7f7f7f"),
            ("pgoutput\n(reference)", d["pg_recvlogical_pgoutput"]["events_per_s"], None, "#bdbdbd"),
            ("outboxd", d["outboxd"]["events_per_s"], d["outboxd"].get("steady_events_per_s"), colors["outboxd"]),
            ("Debezium", d["debezium"]["events_per_s"], d["debezium"].get("steady_events_per_s"), colors["debezium"])]
    for i, (name, v, steady, c) in enumerate(bars):
        ax2.bar(i, v, 0.6, color=c)
        ax2.text(i, v / 2, f"{v / 1000:.0f}k", ha="center", va="center", fontsize=9, color="white")
        if steady:
            ax2.plot([i - 0.3, i + 0.3], [steady, steady], color="black", linestyle="--", linewidth=1)
            ax2.text(i + 0.32, steady, f"{steady / 1000:.0f}k steady", va="center", fontsize=7)
    ax2.set_xticks(range(len(bars)))
    ax2.set_xticklabels([b[0] for b in bars], fontsize=8)
    ax2.set_ylabel("events/s")
    ax2.set_title(f"Backlog drain, {r['params']['backlog_rows'] // 1000}k rows (bars: from start; dashed: steady)")
    fig.suptitle(f"outboxd vs Debezium, run {r['run_id']} ({r['machine']['nproc']} cores, shared by PG + Kafka)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
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
    r["targets"] = targets(r)
    with open(a.result, "w") as f:
        json.dump(r, f, indent=2)
    table = tables(r)
    print(table)
    plot(r, a.png)

    m, v, p, env = r["machine"], r["versions"], r["params"], r.get("environment", {})
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
        "PARAMS": (f"backlog {p['backlog_rows']:,} rows in transactions of 1000; fixed rates "
                   f"{', '.join(f'{x:,}' for x in p['rates'])} events/s for {p['step_seconds']:.0f} s each "
                   f"(rows per transaction: {', '.join(f'{k}/s: {n}' for k, n in p['rows_per_txn'].items())}), "
                   f"after a {p['warmup_seconds']:.0f} s warm-up at 1k/s; {p['partitions']} partitions per topic; "
                   f"payload ~{p['payload_pad_bytes']} B of padding in a jsonb object"),
        "SERVICES": env.get("services", "?"),
        "NOISE": (f"load average at start {' '.join(env.get('loadavg_at_start', []))}, at end "
                  f"{' '.join(env.get('loadavg_at_end', []))}; other active replication slots at start: "
                  f"{', '.join(env.get('other_active_slots', [])) or 'none'}"),
    }
    for k, val in subst.items():
        doc = doc.replace("{{" + k + "}}", str(val))
    with open(a.doc, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
