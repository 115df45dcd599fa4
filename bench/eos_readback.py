"""Restart time of the exactly-once read-back with a 1M-record partition
(issue 19), against the services of scripts/services.sh (OBX_PG_PORT,
OBX_KAFKA_PORT).

One partition gets 1,000,000 records of another writer, then 1,000 outbox
events of one aggregate, then `after` more foreign records. The slot is then
set back to before the events (a copy of it taken first), so a restart has
all 1,000 in its replay window and must find them in Kafka. Printed: the
read-back's records and milliseconds (outboxd's debug line), the events it
skipped, and the seconds from process start until the slot is confirmed.

  python3 bench/eos_readback.py history   # 1M records before the window (the usual case)
  python3 bench/eos_readback.py inside    # 1M records inside the window (worst case: all are read)
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from conftest import APP_DSN, BIN, BROKERS, OUTBOX_DDL, RELAY_DSN, Harness, current_lsn, free_port, http_get, metric, pg  # noqa: E402

N_FOREIGN = int(os.environ.get("N_FOREIGN", "1000000"))
N_EVENTS = 1000
MARGIN_S = 60  # exactly_once.clock_skew_ms default


def foreign(topic, n, start):
    """n records of another writer, all with key agg-1 (so the partition of
    the events), through outboxd's partitioner."""
    value = b"\x1a\x0bforeign-rec\x2a\x07foreignR\x0eJ\x0cother-writer"
    data = b"".join(b"agg-1:" + value + b"\n" for _ in range(n))
    out = subprocess.run(["kcat", "-P", "-b", BROKERS, "-t", topic, "-K", ":", "-X", "partitioner=murmur2_random",
                          "-X", "linger.ms=50", "-X", "batch.num.messages=10000"], input=data, capture_output=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr


def main(mode):
    h = Harness(f"eos_bench_{mode}")
    topic = f"{h.prefix}.athlete"
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {h.table}")
        c.execute(OUTBOX_DDL.format(t=h.table))
    with pg(RELAY_DSN) as c:
        for s in (h.slot, h.slot + "_bak"):
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (s,))
    subprocess.run([BIN, "slot", "create"], env={**os.environ, **h.env()}, check=True, capture_output=True)
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (h.slot, h.slot + "_bak"))
    t = time.time()
    if mode == "history":
        foreign(topic, N_FOREIGN, 0)
        print(f"{N_FOREIGN} foreign records in {time.time() - t:.1f} s; waiting {MARGIN_S + 5} s (clock skew allowance)")
        time.sleep(MARGIN_S + 5)
    with pg() as c:
        for i in range(N_EVENTS // 100):
            with c.transaction():
                for j in range(100):
                    c.execute(f"INSERT INTO {h.table}(aggregatetype, aggregateid, type, payload, aggregate_version)"
                              " VALUES ('athlete', 'agg-1', 'e', '{}', %s)", (i * 100 + j + 1,))
    first = h.start()
    h.wait_confirmed(current_lsn(), timeout=300)
    assert first.stop() == 0
    t = time.time()
    foreign(topic, N_FOREIGN if mode == "inside" else 100, 10**7)
    print(f"foreign records after the events written in {time.time() - t:.1f} s")
    # The replay window: the slot back to before the events.
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (h.slot,))
        c.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (h.slot + "_bak", h.slot))
    port = free_port()
    t0 = time.time()
    p = h.start(wait=False, OUTBOXD_LOG_LEVEL="debug", OUTBOXD_STATUS_LISTEN=f"127.0.0.1:{port}")
    h.wait_confirmed(current_lsn(), timeout=600)
    took = time.time() - t0
    m = http_get(port, "/metrics")[1]
    skipped = metric(m, "outboxd_events_skipped_duplicate_total", slot=h.slot)
    published = metric(m, "outboxd_events_published_total", slot=h.slot)
    fallbacks = metric(m, "outboxd_exactly_once_fallback_total", slot=h.slot) or 0
    p.stop(signal.SIGTERM)
    lines = [l for l in p.log().splitlines() if "dedup_tail" in l]
    print("\n".join(lines))
    print(f"mode={mode}: skipped {skipped:.0f} of {N_EVENTS}, published {published:.0f}, fallbacks {fallbacks:.0f}, "
          f"start to slot confirmed {took:.2f} s")
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", (h.slot + "_bak",))
        c.execute("SELECT pg_drop_replication_slot(%s)", (h.slot,))
    with pg() as c:
        c.execute(f"DROP TABLE IF EXISTS {h.table}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "history")
