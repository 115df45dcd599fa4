"""decoder = wal2json | pgoutput (issue 14): a slot made for one decoder is
refused by the other, and the pgoutput publication outboxd manages is created
as it must be, used, and refused (with the fix named) when it differs. These
tests set the decoder themselves, whatever OBX_DECODER says."""
import json
import os
import subprocess

import pytest

from conftest import APP_DSN, BIN, OUTBOX_DDL, RELAY_DSN, SUPER_DSN, current_lsn, pg


def _run(env, args=("run",), timeout=60):
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXD_")}
    full.update(env)
    return subprocess.run([BIN, *args], env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("made_for,run_with", [("wal2json", "pgoutput"), ("pgoutput", "wal2json")])
def test_slot_of_the_other_decoder_is_refused(harness, made_for, run_with):
    with pg(RELAY_DSN) as c:
        c.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (harness.slot, made_for))
    r = _run(harness.env(OUTBOXD_DECODER=run_with))
    assert r.returncode == 2, r.stderr
    assert f'uses plugin "{made_for}", but decoder = {run_with}' in r.stderr, r.stderr
    assert f"set decoder = {made_for}" in r.stderr and "slot drop" in r.stderr, r.stderr
    # Refused before anything else: no publication made for a slot it will not use.
    with pg(RELAY_DSN) as c:
        assert c.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (harness.slot,)).fetchone()[0] == 0
        assert c.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s",
                         (harness.slot,)).fetchone()[0] == made_for


def _publication(name):
    with pg(RELAY_DSN) as c:
        row = c.execute("SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot, puballtables"
                        " FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        tables = sorted(r[0] for r in c.execute(
            "SELECT c.relname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
            " JOIN pg_class c ON c.oid = r.prrelid WHERE p.pubname = %s", (name,)).fetchall())
    return row, tables


def test_publication_created_used_and_refused(harness):
    pub = harness.slot + "_pub"
    with pg(SUPER_DSN) as c:
        c.execute(f'DROP PUBLICATION IF EXISTS "{pub}"')
        signals = c.execute("SELECT to_regclass('public.outboxd_signals') IS NOT NULL").fetchone()[0]
    try:
        env = dict(OUTBOXD_DECODER="pgoutput", OUTBOXD_PUBLICATION_NAME=pub)
        p = harness.start(**env)
        assert f'created publication "{pub}"' in p.log()
        row, tables = _publication(pub)
        assert row == (True, False, False, False, True, False)
        assert tables == sorted([harness.table] + (["outboxd_signals"] if signals else []))
        with pg(APP_DSN) as c:
            c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload, aggregate_version)"
                      " VALUES ('pub', 'a-1', 'Created', '{\"n\": 1}', 1)")
        harness.wait_confirmed(current_lsn())
        events = harness.consume(["pub"])
        assert [(e["aggregate_id"], e["event_type"], json.loads(e["payload"]), e["aggregate_version"]) for e in events] == \
            [("a-1", "Created", {"n": 1}, 1)], events
        assert p.stop() == 0

        # Changed behind outboxd's back: refused with the fix, nothing altered.
        with pg(SUPER_DSN) as c:
            c.execute(f"ALTER PUBLICATION \"{pub}\" SET (publish = 'insert, update')")
        r = _run(harness.env(**env))
        assert r.returncode == 2, r.stderr
        assert "publishes updates, deletes or truncates too" in r.stderr, r.stderr
        assert f'ALTER PUBLICATION "{pub}" SET TABLE' in r.stderr and "publish = 'insert'" in r.stderr, r.stderr
        assert _publication(pub)[0][1] is True

        # Gone while the slot stays: changes since cannot be decoded, refused.
        with pg(SUPER_DSN) as c:
            c.execute(f'DROP PUBLICATION "{pub}"')
        r = _run(harness.env(**env))
        assert r.returncode == 2, r.stderr
        assert f'publication "{pub}" does not exist but slot "{harness.slot}" does' in r.stderr, r.stderr
        assert _publication(pub)[0] is None

        # Created again by hand after changes the slot still holds: pgoutput
        # reads it as of those changes, so it is still missing there (exit 2,
        # not a lost slot).
        with pg(APP_DSN) as c:
            c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type) VALUES ('pub', 'a-2', 'X')")
        with pg(SUPER_DSN) as c:
            c.execute(f"CREATE PUBLICATION \"{pub}\" FOR TABLE {harness.table}"
                      + (", outboxd_signals" if signals else "")
                      + " WITH (publish = 'insert', publish_via_partition_root = true)")
        r = _run(harness.env(**env))
        assert r.returncode == 2, r.stderr
        assert f'publication "{pub}" did not exist as of changes slot {harness.slot} still holds' in r.stderr, r.stderr
    finally:
        with pg(SUPER_DSN) as c:
            c.execute(f'DROP PUBLICATION IF EXISTS "{pub}"')


def _halted(p, timeout=30):
    try:
        return p.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("outboxd kept streaming; log:\n" + p.log())


# Every way the publication can stop covering the outbox under a running
# relay: pgoutput then never sends the rows, so the relay must halt, even
# when the change is undone before it looks.
CHANGES = {
    "table_dropped_and_added": ["ALTER PUBLICATION {pub} DROP TABLE {t}", "INSERT",
                                "ALTER PUBLICATION {pub} ADD TABLE {t}"],
    "inserts_off_and_on": ["ALTER PUBLICATION {pub} SET (publish = 'update')", "INSERT",
                           "ALTER PUBLICATION {pub} SET (publish = 'insert')"],
    "outbox_recreated": ["DROP TABLE {t}", "CREATE", "INSERT"],
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_publication_changed_while_streaming_halts(harness, change):
    p = harness.start(OUTBOXD_DECODER="pgoutput")
    insert = (f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload)"
              " VALUES ('pubchg', 'k', 'T', '{}')")
    with pg(APP_DSN) as c:
        c.execute(insert)
    harness.wait_confirmed(current_lsn())
    before = current_lsn()
    with pg(SUPER_DSN) as c:
        for step in CHANGES[change]:
            if step == "INSERT":
                c.execute(insert)
            elif step == "CREATE":
                c.execute(OUTBOX_DDL.format(t=harness.table) + "; ALTER TABLE {0} OWNER TO app".format(harness.table))
            else:
                c.execute(step.format(pub=f'"{harness.slot}"', t=harness.table))
        c.execute(insert)
    assert _halted(p) == 2, p.log()
    assert f'publication "{harness.slot}" was altered, re-created or lost a table while' in p.log(), p.log()
    # Stopped before the change: the slot was not confirmed past it.
    with pg(RELAY_DSN) as c:
        assert c.execute("SELECT confirmed_flush_lsn <= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                         (before, harness.slot)).fetchone()[0], (harness.slot_confirmed(), before, p.log())


@pytest.mark.parametrize("decoder", ["wal2json", "pgoutput"])
@pytest.mark.parametrize("base,value,want", [
    ("jsonb", '{"a": 1.50}', '{"a": 1.50}'),
    ("bytea", "\\x00ff", "\\x00ff"),
])
def test_domain_payload_named_as_wal2json_names_it(harness, decoder, base, value, want):
    """A payload of a domain type is carried by the domain's own name (text),
    as wal2json prints it, never by pgoutput's Type message, which names the
    base type: the same row gives the same event under both decoders."""
    dom = f"{harness.table}_dom"
    with pg(APP_DSN) as c:
        c.execute(f"DROP DOMAIN IF EXISTS {dom} CASCADE")
        c.execute(f"CREATE DOMAIN {dom} AS {base}")
        c.execute(f"ALTER TABLE {harness.table} ALTER COLUMN payload TYPE {dom} USING NULL")
    try:
        p = harness.start(OUTBOXD_DECODER=decoder)
        with pg(APP_DSN) as c:
            c.execute(f"INSERT INTO {harness.table} (aggregatetype, aggregateid, type, payload)"
                      " VALUES ('dom', 'k', 'T', %s)", (value,))
        harness.wait_confirmed(current_lsn())
        events = harness.consume(["dom"])
        assert [(e["content_type"], e["payload"]) for e in events] == [("text/plain; charset=utf-8", want)], events
        assert p.stop() == 0
    finally:
        with pg(APP_DSN) as c:
            c.execute(f"DROP TABLE IF EXISTS {harness.table}")
            c.execute(f"DROP DOMAIN IF EXISTS {dom}")
