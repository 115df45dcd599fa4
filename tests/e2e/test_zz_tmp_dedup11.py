import time, uuid, signal
from conftest import pg, current_lsn, wait_until

def test_tmp_topics(harness):
    n = 40
    harness.create_slot()
    topics = [f"{harness.prefix}.t{i:04d}" for i in range(n)]
    with pg() as c:
        with c.transaction():
            for i, t in enumerate(topics):
                c.execute(f"INSERT INTO {harness.table} (id, aggregatetype, aggregateid, type, payload, topic)"
                          " VALUES (%s, 'many', %s, 'created', '{}', %s)", (str(uuid.uuid4()), f"k{i}", t))
    end = current_lsn()
    t0 = time.time()
    p = harness.start(OUTBOXD_LOG_LEVEL="debug")
    harness.wait_confirmed(end, timeout=300)
    print("first run", time.time() - t0)
    p.stop()
    with pg() as c:
        with c.transaction():
            for i, t in enumerate(topics):
                c.execute(f"INSERT INTO {harness.table} (id, aggregatetype, aggregateid, type, payload, topic)"
                          " VALUES (%s, 'many', %s, 'created', '{}', %s)", (str(uuid.uuid4()), f"k{i}", t))
    end = current_lsn()
    t0 = time.time()
    p = harness.start(OUTBOXD_LOG_LEVEL="debug")
    harness.wait_confirmed(end, timeout=300)
    print("second run", time.time() - t0)
    p.stop()
    print(p.log())
