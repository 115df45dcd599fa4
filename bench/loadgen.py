#!/usr/bin/env python3
"""Fixed-rate outbox load for bench/run.sh: commits RATE rows/s for SECONDS, in
transactions of BATCH rows (one multi-row INSERT per autocommit statement, so one
round trip and one commit per transaction), and records each row's commit time.

Row ids encode the step and the sequence number (uuid STEP-0000-4000-8000-SEQ),
so a Kafka record's `id` header alone tells which commit it belongs to, for
outboxd and Debezium alike. The commit time is taken when COMMIT has returned to
the client (wall clock, the same clock the local broker stamps LogAppendTime
with); it is a few tens of microseconds after the server made the commit durable.

Writes "SEQ COMMIT_EPOCH_S" lines to --out and a JSON summary to stdout.
"""
import argparse
import json
import time

import psycopg


def row_id(step, seq):
    return f"{step:08x}-0000-4000-8000-{seq:012x}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--aggtype", required=True, help="aggregatetype: the topic suffix")
    ap.add_argument("--step", type=int, required=True, help="step number encoded in row ids")
    ap.add_argument("--rate", type=float, required=True, help="rows per second")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--batch", type=int, default=1, help="rows per transaction")
    ap.add_argument("--pad", type=int, default=600, help="payload padding bytes")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    total = int(a.rate * a.seconds) // a.batch * a.batch
    cols = "(id, aggregatetype, aggregateid, type, aggregate_version, payload)"
    one = "(%s::uuid, %s, %s, 'Updated', %s, %s::jsonb)"
    sql = f"INSERT INTO {a.table} {cols} VALUES " + ", ".join([one] * a.batch)
    pad = "x" * a.pad
    commits = []
    behind = 0.0
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        cur = conn.cursor()
        t0 = time.time() + 0.05
        for first in range(0, total, a.batch):
            due = t0 + first / a.rate
            now = time.time()
            if now < due:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            params = []
            for seq in range(first, first + a.batch):
                params += [row_id(a.step, seq), a.aggtype, f"agg-{seq % 5000}", seq,
                           json.dumps({"n": seq, "name": f"Zoë \"q\" {seq}", "pad": pad})]
            cur.execute(sql, params, prepare=True)
            commits.append(time.time())
        elapsed = time.time() - t0
    with open(a.out, "w") as f:
        for i, t in enumerate(commits):
            for seq in range(i * a.batch, (i + 1) * a.batch):
                f.write(f"{seq} {t:.6f}\n")
    print(json.dumps({"rows": total, "seconds": round(elapsed, 3), "achieved_rate": round(total / elapsed, 1),
                      "target_rate": a.rate, "batch": a.batch,
                      "max_behind_ms": round(behind * 1000, 1)}))


if __name__ == "__main__":
    main()
