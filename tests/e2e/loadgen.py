"""A load generator that writes outbox rows the way a producer service does
(domain change + outbox row in one transaction) from concurrent connections,
in transactions of mixed sizes, and keeps its own record of what committed.

Per-aggregate versions come from a row-locked counter, so commit order and
version order agree: the verifier can demand versions 1..n in Kafka order."""
import json
import os
import random
import threading
import time
import uuid

import psycopg

SIZES = [1, 1, 1, 1, 2, 2, 3, 5, 8, 20, 50, 120]
UNICODE = ["Zoë", "Łódź", "東京", "emoji 🥊", 'quote " and \\ backslash', "tab\tnew\nline", "\u0001ctl"]


class LoadGen:
    def __init__(self, dsn, table, aggregates=200, seed=1, aggregate_types=("athlete", "bout"), emit=0.0,
                 message_prefix=None):
        """emit: the share of events written with outbox_emit() (a logical
        message, deploy/sql/outbox.sql) instead of an outbox row; the rest
        are rows, mixed in the same transactions. message_prefix: the
        session's outboxd.message_prefix."""
        self.dsn = dsn
        self.emit = emit
        self.message_prefix = message_prefix
        self.table = table
        self.counter = table + "_agg"
        self.other = table + "_other"
        self.aggregates = [f"agg-{i}" for i in range(aggregates)]
        self.types = aggregate_types
        self.seed = seed
        self.committed = {}  # event id -> expected event
        self.lock = threading.Lock()
        self.rolled_back = 0
        self.txns = 0
        with psycopg.connect(dsn, autocommit=True) as c:
            if emit:  # the producer's function, as deploy/sql/outbox.sql defines it
                sql = open(os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "sql", "outbox.sql")).read()
                c.execute(sql[sql.index("CREATE OR REPLACE FUNCTION outbox_emit"):])
            c.execute(f"DROP TABLE IF EXISTS {self.counter}, {self.other}")
            c.execute(f"CREATE TABLE {self.counter} (id text PRIMARY KEY, version bigint NOT NULL)")
            c.execute(f"CREATE TABLE {self.other} (id serial PRIMARY KEY, note text)")
            with c.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.counter} VALUES (%s, 0)", [(a,) for a in self.aggregates])

    def drop(self):
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {self.counter}, {self.other}")

    def _txn(self, conn, rnd):
        size = rnd.choice(SIZES)
        kind = rnd.random()
        rows = []
        with conn.transaction() as tx:
            if kind < 0.05:  # touches only another table: an empty transaction for the slot
                conn.execute(f"INSERT INTO {self.other}(note) VALUES ('x')")
                return []
            if kind < 0.10:
                conn.execute(f"INSERT INTO {self.other}(note) VALUES ('mixed')")
            # Lock aggregates in one order so concurrent writers never deadlock.
            for agg in sorted(rnd.choice(self.aggregates) for _ in range(size)):
                ver = conn.execute(f"UPDATE {self.counter} SET version = version + 1 WHERE id = %s RETURNING version",
                                   (agg,)).fetchone()[0]
                atype = self.types[int(agg.split("-")[1]) % len(self.types)]
                eid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
                payload = {"aggregateId": agg, "version": ver, "name": rnd.choice(UNICODE),
                           "n": rnd.randint(-10**12, 10**12), "pad": "x" * rnd.randint(0, 600)}
                headers = {"trace": uuid.uuid4().hex, "attempt": 1} if rnd.random() < 0.3 else None
                if self.emit and rnd.random() < self.emit:
                    eid, occurred = conn.execute(
                        "SELECT outbox_emit(%s, %s, %s, %s, %s, NULL, %s)::text,"
                        " (extract(epoch FROM now()) * 1000000)::bigint",
                        (atype, agg, "Updated" if ver > 1 else "Created", json.dumps(payload), ver,
                         json.dumps(headers) if headers else None)).fetchone()
                    rows.append({"event_id": eid, "aggregate_type": atype, "aggregate_id": agg,
                                 "event_type": "Updated" if ver > 1 else "Created", "payload": payload,
                                 "aggregate_version": ver, "headers": headers, "occurred_at_us": occurred,
                                 "via": "message"})
                    continue
                occurred = conn.execute(
                    f"INSERT INTO {self.table}(id, aggregatetype, aggregateid, type, payload, aggregate_version, headers)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " RETURNING (extract(epoch FROM occurred_at) * 1000000)::bigint",
                    (eid, atype, agg, "Updated" if ver > 1 else "Created", json.dumps(payload), ver,
                     json.dumps(headers) if headers else None)).fetchone()[0]
                rows.append({"event_id": eid, "aggregate_type": atype, "aggregate_id": agg,
                             "event_type": "Updated" if ver > 1 else "Created", "payload": payload,
                             "aggregate_version": ver, "headers": headers, "occurred_at_us": occurred})
            if kind > 0.97:
                rows = []
                tx_rollback = True
            else:
                tx_rollback = False
            if tx_rollback:
                raise psycopg.Rollback(tx)
        return rows

    def run(self, n_events, threads=8, rate_sleep=0.0):
        """Writes at least n_events committed outbox rows; returns when done."""
        target = n_events
        errors = []
        self.runs = getattr(self, "runs", 0) + 1
        run_no = self.runs

        def worker(i):
            rnd = random.Random(self.seed * 1_000_000 + run_no * 1000 + i)
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    if self.message_prefix:
                        conn.execute("SELECT set_config('outboxd.message_prefix', %s, false)", (self.message_prefix,))
                    while True:
                        with self.lock:
                            if len(self.committed) >= target:
                                return
                        rows = self._txn(conn, rnd)
                        with self.lock:
                            self.txns += 1
                            for r in rows:
                                self.committed[r["event_id"]] = r
                        if rate_sleep:
                            time.sleep(rate_sleep)
            except Exception as e:  # surfaced by the caller
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        return self.committed


def verify(committed, events, slot, table, exactly_once=True):
    """Compares what arrived with what committed. Returns a summary dict;
    raises AssertionError naming the first problems."""
    problems = []
    seen = {}
    dups = 0
    for ev in events:
        eid = ev["event_id"]
        if eid in seen:
            dups += 1
            continue
        seen[eid] = ev
    missing = [e for e in committed if e not in seen]
    unexpected = [e for e in seen if e not in committed]
    if missing:
        problems.append(f"{len(missing)} committed events missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} events that never committed, e.g. {unexpected[:3]}")
    if exactly_once and dups:
        problems.append(f"{dups} duplicates")
    for eid, ev in seen.items():
        want = committed.get(eid)
        if not want:
            continue
        got = {
            "aggregate_type": ev["aggregate_type"], "aggregate_id": ev["aggregate_id"],
            "event_type": ev["event_type"], "payload": json.loads(ev["payload"]),
            "aggregate_version": ev["aggregate_version"], "occurred_at_us": ev["occurred_at_us"],
        }
        for k, v in got.items():
            if want[k] != v:
                problems.append(f"event {eid}: {k} = {v!r}, committed {want[k]!r}")
                break
        if ev["key"] != want["aggregate_id"]:
            problems.append(f"event {eid}: key {ev['key']!r} != aggregate id")
        wh = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (want["headers"] or {}).items()}
        if ev["headers"] != wh:
            problems.append(f"event {eid}: headers {ev['headers']} != {wh}")
        if ev["content_type"] != "application/json":
            problems.append(f"event {eid}: content_type {ev['content_type']}")
        src = ev["source"]
        if src["slot"] != slot or src["table"] != table or src["database"] != "app" or src["commit_time_us"] <= 0:
            problems.append(f"event {eid}: source {src}")
        if len(problems) > 20:
            break
    # Per-aggregate order: all of an aggregate's events are in one partition,
    # and in offset order their versions must run 1, 2, 3, ...
    by_agg = {}
    for ev in sorted(events, key=lambda e: (e["topic"], e["partition"], e["offset"])):
        by_agg.setdefault(ev["aggregate_id"], []).append(ev)
    for agg, evs in by_agg.items():
        parts = {(e["topic"], e["partition"]) for e in evs}
        if len(parts) != 1:
            problems.append(f"aggregate {agg} spread over partitions {parts}")
        versions = [e["aggregate_version"] for e in evs]
        if exactly_once:
            if versions != list(range(1, len(versions) + 1)):
                problems.append(f"aggregate {agg} versions out of order: {versions[:20]}")
        else:
            # At-least-once: a redelivered run may restart, but never goes back
            # below what was delivered before it without first repeating it.
            dedup = []
            for v in versions:
                if v not in dedup:
                    dedup.append(v)
            if dedup != sorted(dedup):
                problems.append(f"aggregate {agg} versions out of order: {versions[:20]}")
    # Transactions stay whole and ordered: rows of one commit share its LSN
    # and carry consecutive indexes.
    by_commit = {}
    for ev in seen.values():
        by_commit.setdefault(ev["source"]["commit_lsn"], []).append(ev["source"]["index_in_txn"])
    for lsn, idx in by_commit.items():
        if sorted(idx) != list(range(len(idx))):
            problems.append(f"transaction at {lsn} has indexes {sorted(idx)[:10]}")
            break
    assert not problems, "\n".join(problems[:25])
    return {"committed": len(committed), "received": len(events), "duplicates": dups}
