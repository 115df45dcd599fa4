"""Pretty-prints `outboxd consume` JSON lines (the demo's view of Kafka).
usage: outboxd consume ... | python3 scripts/show_events.py [LAST_N]"""
import json
import sys

last = int(sys.argv[1]) if len(sys.argv) > 1 else 0
def lsn(s):
    hi, lo = s.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


events = [json.loads(line) for line in sys.stdin if line.strip()]
# Commit order, as the producer committed them (Kafka orders per partition only).
events.sort(key=lambda e: (lsn(e["source"]["commit_lsn"]), e["source"]["index_in_txn"]))
for e in events[-last:] if last else events:
    p = json.loads(e["payload"]) if e["content_type"] == "application/json" else {}
    print("  {topic} p{partition}@{offset:<5} key={key:<8} v{ver:<3} {etype} status={status:<9} commit_lsn={lsn}".format(
        topic=e["topic"], partition=e["partition"], offset=e["offset"], key=e["key"], ver=e["aggregate_version"],
        etype=e["event_type"], status=p.get("status", "-"), lsn=e["source"]["commit_lsn"]))
print(f"  ({len(events)} events in the topic; last {min(last or len(events), len(events))} shown)")
