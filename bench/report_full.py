"""Tables, targets and the plot of a full bench/run.sh result (bench/full.py):
every figure as median (min - max) over its repetitions; targets of issue 18
judged on medians, reported and never asserted.

`report.py --verdicts A.json B.json C.json` prints the targets of several runs
side by side (issue 18: the same verdicts on three consecutive runs).
"""
import statistics

NAMES = {"limit_wal2json": "decoding limit, wal2json (slot reader: receive + ack)",
         "outboxd": "outboxd, decoder = wal2json",
         "limit_pgoutput": "decoding limit, pgoutput (slot reader: receive + ack)",
         "outboxd_pgoutput": "outboxd, decoder = pgoutput",
         "debezium": "Debezium (embedded engine, pgoutput)"}


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def med(sp, digits=0, rng=True):
    """'median (min - max)' of a spread from full.py."""
    if not sp:
        return "n/a"
    if not rng or sp["min"] == sp["max"]:
        return fmt(sp["median"], digits)
    return f"{fmt(sp['median'], digits)} ({fmt(sp['min'], digits)} - {fmt(sp['max'], digits)})"


def unbounded(ratios, section, system):
    """Repetitions in which `system` outran its decoding limit: no verdict against it."""
    return [b["rep"] for b in ratios["limit_is_upper_bound"]
            if b["section"] == section and b["system"] == system and not b["bounded"]]


def steps_unjudgeable(e):
    """Why a latency entry gives no verdict: not measured, or valid in no more
    than half of its repetitions (a median over a minority is one lucky step;
    over a majority, e.g. 2 of 3, it is still the typical step)."""
    if not e or not e.get("reps"):
        return "not measured (no 10k events/s step in --rates)"
    if e["valid"] * 2 <= e["reps"]:
        return f"only {e['valid']} of {e['reps']} steps valid (generator lagged)"
    return None


def targets(r):
    s, ratios = r["summary"], r["summary"]["ratios"]
    out = []
    restarted = r.get("environment", {}).get("services_restarted_during_run")

    def add(name, value, ok, detail, kind="target", why_not=None):
        # A target whose figure is not valid gets no verdict, never "met".
        if kind != "validity" and restarted:
            why_not = f"run not valid: {', '.join(restarted)} restarted during it"
        if why_not:
            ok, detail = None, f"NO VERDICT, {why_not}; {detail}"
        out.append({"target": name, "value": value, "met": None if ok is None else bool(ok), "detail": detail,
                    "kind": kind, "invalid": bool(why_not)})

    lat = s["latency"]
    o10 = lat.get("outboxd", {}).get("r10k", {})
    d10 = lat.get("debezium", {}).get("r10k", {})
    p99 = (o10.get("p99_ms") or {}).get("median")
    add("p99 commit-to-append <= 5 ms at 10k events/s", f"{fmt(p99, 1)} ms", p99 is not None and p99 <= 5,
        f"outboxd, median of {o10.get('valid', 0)} valid of {o10.get('reps', 0)} steps; p50 "
        f"{med(o10.get('p50_ms'), 1, False)} ms", why_not=steps_unjudgeable(o10))
    x = ratios["drain_outboxd_vs_wal2json_limit"]
    bad = unbounded(ratios, "drain", "outboxd")
    add("drain >= 0.95x the decoding limit", f"{fmt(x.get('median'), 2)}x", x.get("median") and x["median"] >= 0.95,
        f"outboxd (wal2json) / slot reader on wal2json, steady events/s, per repetition {x['per_rep']}",
        why_not=bad and f"the limit was not an upper bound in repetition(s) {bad}")
    x = ratios["drain_outboxd_vs_debezium"]
    add(">= 5x Debezium's events/s", f"{fmt(x.get('median'), 2)}x", x.get("median") and x["median"] >= 5,
        f"steady drain, per repetition {x['per_rep']}; outboxd on pgoutput (Debezium's plugin): "
        f"{fmt(ratios['drain_outboxd_pgoutput_vs_debezium'].get('median'), 2)}x")
    x = ratios.get("p99_10k_debezium_vs_outboxd")
    why = steps_unjudgeable(o10) or steps_unjudgeable(d10)
    add(">= 20x lower p99 than Debezium at 10k/s", f"{fmt(x, 1)}x", x is not None and x >= 20,
        f"Debezium p99 {med(d10.get('p99_ms'), 1)} ms vs outboxd {med(o10.get('p99_ms'), 1)} ms (medians of valid steps)",
        why_not=why and f"outboxd or Debezium: {why}")
    x = ratios["memory_debezium_vs_outboxd"]
    m = r["memory"]
    add(">= 20x less memory", f"{fmt(x, 1)}x", x >= 20,
        f"peak RSS, the larger of median drain peak and fixed-rate peak: outboxd "
        f"{med(m['outboxd']['drain_peak_rss_mib'], 1)} / {m['outboxd']['steady_peak_rss_mib']} MiB, Debezium JVM "
        f"{med(m['debezium']['drain_peak_rss_mib'], 1)} / {m['debezium']['steady_peak_rss_mib']} MiB")
    x = ratios.get("private_memory_debezium_vs_outboxd")
    if x is not None:
        add("private memory (anonymous RSS: heap, stacks), Debezium / outboxd", f"{fmt(x, 1)}x", None,
            f"sampled peaks: outboxd {med(m['outboxd'].get('drain_peak_anon_mib'), 1)} MiB draining / "
            f"{m['outboxd'].get('steady_peak_anon_mib')} MiB at fixed rates, Debezium "
            f"{med(m['debezium'].get('drain_peak_anon_mib'), 1)} / {m['debezium'].get('steady_peak_anon_mib')} MiB; "
            "RSS also counts shared-library pages (13 MiB of outboxd's 16 at rest)", kind="related")
    ap = (r.get("apply") or {}).get("median") or {}
    x = ap.get("apply_vs_sql_limit_rep_median")
    add("apply >= 0.8x the replica's write limit", f"{fmt(x, 2)}x", x is not None and x >= 0.8,
        f"events/s, median of the per-repetition ratios; outboxd apply {fmt(ap.get('apply'))} ev/s vs the same "
        f"upsert from SQL {fmt(ap.get('sql_limit'))} ev/s (medians); per row written "
        f"{fmt(ap.get('apply_rows_vs_sql_limit'), 2)}x (apply keeps only the newest version of a key within a "
        f"batch, so it writes fewer rows than events); "
        f"row-at-a-time consumer {fmt(ap.get('apply_row'))} ev/s ({fmt(ap.get('apply_vs_row'), 1)}x slower than apply)")
    x = ratios["drain_outboxd_pgoutput_vs_pgoutput_limit"]
    bad = unbounded(ratios, "drain", "outboxd_pgoutput")
    add("drain, decoder = pgoutput, vs pgoutput's limit (issue 14: >= 0.9x)", f"{fmt(x.get('median'), 2)}x",
        x.get("median") and x["median"] >= 0.9, f"per repetition {x['per_rep']}", kind="related",
        why_not=bad and f"the limit was not an upper bound in repetition(s) {bad}")
    for key, label in (("messages_outboxd_vs_wal2json_limit", "message outbox drain vs wal2json's limit"),
                       ("messages_outboxd_pgoutput_vs_pgoutput_limit", "message outbox drain, pgoutput, vs its limit")):
        x = ratios[key]
        add(label, f"{fmt(x.get('median'), 2)}x", None, f"per repetition {x['per_rep']}", kind="related")
    bound = ratios["limit_is_upper_bound"]
    bad = [b for b in bound if not b["bounded"]]
    add("the decoding limit bounds every reader in every repetition", f"{len(bound) - len(bad)} of {len(bound)}",
        not bad, "; ".join(f"{b['section']} rep {b['rep']}: {b['system']} {b['value']:,} > {b['plugin']} limit "
                           f"{b['limit']:,}" for b in bad) or "yes (within 2 %)", kind="validity")
    for sysname in ("outboxd", "debezium"):
        for rate, e in lat.get(sysname, {}).items():
            add(f"{sysname} at {rate[1:]}/s: load generator held its rate", f"{e['valid']} of {e['reps']} steps",
                e["valid"] == e["reps"], f"generator lag per step: p99 {med(e['loadgen_lag_p99_ms'], 2)} ms, max {med(e['loadgen_lag_max_ms'], 2)} ms "
                f"(invalid when the p99 is above {r['params']['max_loadgen_lag_ms']} ms)", kind="validity")
            add(f"{sysname} at {rate[1:]}/s: every event arrived exactly once", f"{e['missing']} missing, "
                f"{e['duplicates']} duplicates", not e["missing"] and not e["duplicates"],
                "read back from the step's topic by event id", kind="validity")
    # A drain rate divides the backlog by a time span: only right if the topic
    # holds exactly the backlog (not fewer, not duplicates).
    wrong = [f"{sec} {label}: {row['records_in_topic']:,}" for sec in ("drain", "messages")
             for label, row in r.get(sec, {}).items()
             if "records_in_topic" in row and row["records_in_topic"] != row["events"]]
    add("every drain topic holds exactly the backlog", f"{len(wrong)} wrong", not wrong,
        "; ".join(wrong) + f" records, not {r['params']['backlog_rows']:,}" if wrong else "yes", kind="validity")
    reps = r["params"].get("reps", 0)
    add("every figure from >= 3 repetitions", f"{reps}", reps >= 3, "issue 18: median of 3; with fewer the "
        "median is one run's figure", kind="validity")
    busy = r.get("environment", {}).get("cpu_busy_at_start")
    add("machine quiet before the run (CPU busy <= 25 %)", f"{fmt(busy * 100 if busy is not None else None)} %",
        None if busy is None else busy <= 0.25, "both cores, 2 s before the first phase; other work on the "
        "cores shows up in every figure", kind="validity")
    return out


def tables(r):
    s, p = r["summary"], r["params"]
    t = []
    restarted = r.get("environment", {}).get("services_restarted_during_run")
    if restarted:
        t.append(f"> **WARNING: this run is not valid**: {', '.join(restarted)} changed during the run.\n")
    reps = p["reps"]
    for section, title in (("drain", f"**Backlog drain**: {p['backlog_rows']:,} outbox rows committed before any "
                                     "reader starts"),
                           ("messages", f"**Message outbox drain**: {p['backlog_rows']:,} events written with "
                                        "`outbox_emit()` (logical messages, no table rows)")):
        t.append(f"{title}; median (min - max) of {reps} repetitions\n")
        t.append("| system | steady events/s (first to last) | events/s from process start | start-up s "
                 "| CPU s / 100k | peak RSS MiB |")
        t.append("|---|---:|---:|---:|---:|---:|")
        for k, label in NAMES.items():
            x = s[section].get(k)
            if not x:
                continue
            t.append(f"| {label} | {med(x['steady_events_per_s'])} | {med(x['events_per_s'])} "
                     f"| {med(x['startup_s'], 2)} | {med(x['cpu_s_per_100k'], 2, False)} "
                     f"| {med(x['peak_rss_mib'], 1, False)} |")
        t.append("")
    t.append(f"**Commit-to-broker-append latency at fixed rates** ({p['step_seconds']:.0f} s per step, {reps} "
             "repetitions interleaved; ms; median (min - max) over valid steps)\n")
    t.append("| system | rate ev/s | valid steps | achieved ev/s | generator lag p99 / max ms | p50 | p95 | p99 | max "
             "| missing / dup | catch-up s | machine CPU busy | CPU s / 100k |")
    t.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for sysname, rates in s["latency"].items():
        for rate, e in sorted(rates.items(), key=lambda kv: kv[1]["achieved_rate"]["median"]):
            busy = e["machine_busy"]
            t.append(f"| {sysname} | {rate[1:]} | {e['valid']} / {e['reps']} | {med(e['achieved_rate'], 0, False)} "
                     f"| {med(e['loadgen_lag_p99_ms'], 2, False)} / {med(e['loadgen_lag_max_ms'], 2, False)} "
                     f"| {med(e['p50_ms'], 1)} | {med(e['p95_ms'], 1)} "
                     f"| {med(e['p99_ms'], 1)} | {med(e['max_ms'], 1)} | {e['missing']} / {e['duplicates']} "
                     f"| {med(e['catch_up_after_load_s'], 2)} | {fmt(busy['median'] * 100 if busy else None)} % "
                     f"| {med(e['cpu_s_per_100k'], 2, False)} |")
    t.append("")
    ap = r.get("apply")
    if ap:
        t.append(f"**Apply** ({ap['events']:,} events of the drain topic into a fresh replica table each time, "
                 f"batch {ap['batch']}; events/s, median (min - max) of {len(ap['reps'])})\n")
        t.append("| system | events/s | detail |")
        t.append("|---|---:|---|")
        for k, label, detail in (("sql_limit", "write limit: apply's upsert from SQL, no Kafka", "same statement, batch, commits"),
                                 ("apply", "outboxd apply", "first to last row applied"),
                                 ("apply_row", "row-at-a-time consumer (the article's)", "one upsert + commit per event")):
            xs = [rep[k]["events_per_s"] for rep in ap["reps"] if rep.get(k)]
            sp = {"min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else None
            t.append(f"| {label} | {med(sp)} | {detail} |")
        t.append("")
    m = r["memory"]
    t.append("**Relay memory** (peak RSS, MiB)\n")
    t.append("| system | backlog drain, median (min - max) | fixed-rate steps | private (anonymous) memory: drain "
             "/ fixed rates | start to streaming s |")
    t.append("|---|---:|---:|---:|---:|")
    for sysname in ("outboxd", "debezium"):
        t.append(f"| {sysname} | {med(m[sysname]['drain_peak_rss_mib'], 1)} | {m[sysname]['steady_peak_rss_mib']} "
                 f"| {med(m[sysname].get('drain_peak_anon_mib'), 1, False)} / {m[sysname].get('steady_peak_anon_mib')} "
                 f"| {m[sysname]['startup_to_streaming_s']} |")
    t.append("")
    t.append("**Targets of issue 18** (medians; reported, not asserted) **and the run's own checks**\n")
    t.append("| target | measured | verdict | detail |")
    t.append("|---|---:|---|---|")
    for x in r["targets"]:
        verdict = "n/a" if x["met"] is None else ("met" if x["met"] else "**not met**")
        if x.get("invalid"):
            verdict = "**no verdict**"
        if x["kind"] == "validity":
            verdict = "n/a" if x["met"] is None else "ok" if x["met"] else "**no**"
        t.append(f"| {x['target']} | {x['value']} | {verdict} | {x['detail']} |")
    return "\n".join(t)


def verdicts(results):
    """One row per target, one column per run: the verdicts side by side."""
    names = [x["target"] for x in results[0]["targets"]]
    t = ["| target | " + " | ".join(r["run_id"] for r in results) + " | same verdict |",
         "|---|" + "---|" * len(results) + "---|"]
    for name in names:
        cells, vs = [], []
        for r in results:
            x = next((y for y in r["targets"] if y["target"] == name), None)
            v = None if x is None else x["met"]
            vs.append(v)
            word = "NO VERDICT" if x and x.get("invalid") else "met" if v else "n/a" if v is None else "NOT MET"
            cells.append("n/a" if x is None else f"{x['value']} {word}")
        t.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if len(set(vs)) == 1 else '**no**'} |")
    return "\n".join(t)


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["summary"]
    colors = {"outboxd": "#1f77b4", "debezium": "#d62728"}
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 3, 1.6]})
    width = 0.38
    xs, labels = [], []
    rates = sorted(s["latency"]["outboxd"], key=lambda k: s["latency"]["outboxd"][k]["achieved_rate"]["median"])
    for i, rate in enumerate(rates):
        for j, q in enumerate(("p50_ms", "p99_ms", "max_ms")):
            x = i * 4 + j
            xs.append(x)
            labels.append(f"{q[:-3]}\n{rate[1:]}/s")
            for k, sysname in enumerate(("outboxd", "debezium")):
                sp = s["latency"].get(sysname, {}).get(rate, {}).get(q)
                if not sp:
                    continue
                v = max(sp["median"], 0.3)
                err = [[v - max(sp["min"], 0.3)], [sp["max"] - v]]
                ax1.bar(x + (k - 0.5) * width, v, width, color=colors[sysname], yerr=err, capsize=2,
                        label=sysname if (i, j) == (0, 0) else None)
                ax1.text(x + (k - 0.5) * width, v * 1.08, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center",
                         va="bottom", fontsize=7)
    ax1.set_yscale("log")
    ax1.set_xticks(xs)
    ax1.set_xticklabels(labels, fontsize=7)
    ax1.set_ylabel("commit to broker append, ms (log)")
    ax1.set_title("Latency at fixed rates (median, min-max bars)")
    ax1.legend()

    bars = []
    for section, tag in (("drain", "rows"), ("messages", "msgs")):
        for k, c in (("limit_wal2json", "#7f7f7f"), ("outboxd", colors["outboxd"]), ("limit_pgoutput", "#bdbdbd"),
                     ("outboxd_pgoutput", "#6baed6"), ("debezium", colors["debezium"])):
            sp = (s[section].get(k) or {}).get("steady_events_per_s")
            if sp:
                name = {"limit_wal2json": "w2j\nlimit", "limit_pgoutput": "pgo\nlimit", "outboxd": "outboxd\nw2j",
                        "outboxd_pgoutput": "outboxd\npgo", "debezium": "Debezium"}[k]
                bars.append((f"{name}\n{tag}", sp, c))
    for i, (name, sp, c) in enumerate(bars):
        ax2.bar(i, sp["median"], 0.65, color=c, yerr=[[sp["median"] - sp["min"]], [sp["max"] - sp["median"]]],
                capsize=2)
        ax2.text(i, sp["median"] / 2, f"{sp['median'] / 1000:.0f}k", ha="center", va="center", fontsize=8,
                 color="white")
    ax2.set_xticks(range(len(bars)))
    ax2.set_xticklabels([b[0] for b in bars], fontsize=7)
    ax2.set_ylabel("events/s (steady, first to last)")
    ax2.set_title(f"Drain of {r['params']['backlog_rows'] // 1000}k events: rows, then messages")

    ap = r.get("apply")
    if ap:
        keys = [("sql_limit", "SQL\nlimit", "#7f7f7f"), ("apply", "outboxd\napply", colors["outboxd"]),
                ("apply_row", "row at\na time", "#ff7f0e")]
        for i, (k, name, c) in enumerate(keys):
            xs_ = sorted(rep[k]["events_per_s"] for rep in ap["reps"] if rep.get(k))
            if not xs_:
                continue
            v = statistics.median(xs_)
            ax3.bar(i, v, 0.6, color=c, yerr=[[v - xs_[0]], [xs_[-1] - v]], capsize=2)
            ax3.text(i, v * 1.02, f"{v / 1000:.1f}k", ha="center", va="bottom", fontsize=8)
        ax3.set_xticks(range(len(keys)))
        ax3.set_xticklabels([k[1] for k in keys], fontsize=7)
        ax3.set_title("Apply into a replica")
        ax3.set_ylabel("events/s")
    fig.suptitle(f"outboxd vs its limits and Debezium, run {r['run_id']} ({r['machine']['nproc']} cores shared by "
                 "PostgreSQL, Kafka, the load generator and the relay)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def limits_text(r):
    """Which figures this two-core machine set, from the run's own numbers."""
    s, ratios = r["summary"], r["summary"]["ratios"]
    out = []
    d = s["drain"]
    lw = (d.get("limit_wal2json") or {}).get("steady_events_per_s") or {}
    dz = (d.get("debezium") or {}).get("steady_events_per_s") or {}
    x = ratios["drain_outboxd_vs_wal2json_limit"].get("median")
    bad = unbounded(ratios, "drain", "outboxd")
    # Only a drain at the limit is the machine's figure; below it, the gap is outboxd's.
    if bad:
        why = (f"in repetition(s) {bad} outboxd outran it, so in this run it is not an upper bound and the "
               f"drain ratio says nothing")
    elif x is not None and x >= 0.95:
        why = "so its drain figure is the slot's decoding rate on this machine, not a property of outboxd"
    else:
        why = "below the limit: the gap is outboxd's own cost, not the machine's"
    out.append(
        f"- **Drain.** One slot is decoded by one walsender process on one core: the slot reader, which does "
        f"nothing but receive, reached {fmt(lw.get('median'))} events/s on wal2json (median). outboxd drained at "
        f"{fmt(x, 2)}x that; {why}. A faster core moves the limit. The "
        f"Debezium ratio is bounded the same way: outboxd cannot drain faster than the slot decodes, so "
        f"outboxd / Debezium <= limit / Debezium = "
        f"{fmt(lw['median'] / dz['median'] if lw.get('median') and dz.get('median') else None, 2)}x here. "
        f"Debezium's own rate ({fmt(dz.get('median'))} events/s) is its CPU cost per event on the core the "
        f"walsender leaves it.")
    lat = s["latency"]
    for sysname in ("outboxd", "debezium"):
        e = lat.get(sysname, {}).get("r30k")
        if e and e["machine_busy"]:
            out.append(
                f"- **30k events/s, {sysname}.** The machine was {fmt(e['machine_busy']['median'] * 100)} % busy "
                f"(both cores) during the step, with PostgreSQL committing "
                f"{30000 // int(r['params']['rows_per_txn'].get('30000', 10)):,} transactions per second and "
                f"decoding them, Kafka appending, the generator and the relay; the generator held its schedule in "
                f"{e['valid']} of {e['reps']} steps. Latency at this rate measures the shared machine as much as "
                f"the relay" + (": Debezium did not keep up (catch-up after the load "
                                f"{med(e['catch_up_after_load_s'], 1)} s)." if sysname == "debezium" and
                                (e['catch_up_after_load_s'] or {}).get('median', 0) > 1 else "."))
    e = lat.get("outboxd", {}).get("r10k")
    if e:
        out.append(
            f"- **10k events/s.** The machine was {fmt(e['machine_busy']['median'] * 100)} % busy; outboxd itself "
            f"used {med(e['cpu_s_per_100k'], 2, False)} CPU s per 100k events. Latency is measured to the broker's "
            f"append time in milliseconds: values under 1 ms cannot be told apart.")
    ap = (r.get("apply") or {}).get("median") or {}
    if ap:
        out.append(
            f"- **Apply.** The write limit ({fmt(ap.get('sql_limit'))} events/s) is PostgreSQL's rate for apply's "
            f"own statement on this machine; outboxd apply's ratio to it "
            f"({fmt(ap.get('apply_vs_sql_limit_rep_median'), 2)}x, median of the per-repetition ratios) "
            f"is outboxd's, the absolute figure is the machine's.")
    out.append(
        "- **Memory** is not a machine limit: both relays' peaks are set by their own buffers (outboxd's "
        "librdkafka queue bounds, Debezium's JVM heap and queues).")
    return "\n".join(out)


COMPARABLE = ("backlog_rows", "payload_pad_bytes", "rates", "step_seconds", "reps", "max_loadgen_lag_ms")


def consecutive(results):
    """The verdicts of the given full runs (oldest first, the last is this run), side
    by side: only runs with this run's parameters (a --reps 1 or --rows 1000 smoke run
    is no repetition of it), the last three of them."""
    key = [results[-1]["params"].get(k) for k in COMPARABLE]
    same = [x for x in results if [x["params"].get(k) for k in COMPARABLE] == key][-3:]
    note = ""
    if len(same) < len(results):
        note = (f"\n\n{len(results) - len(same)} other run(s) left out: other parameters "
                f"({', '.join(COMPARABLE)}) or older than the last three.")
    if len(same) < 2:
        return "Only this run so far with these parameters." + note
    return verdicts(same) + note
