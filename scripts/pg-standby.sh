#!/usr/bin/env bash
# A primary and a physical standby (pg_basebackup -R) for failover tests.
# Usage: OBX_RUN_DIR=DIR OBX_PG_PORT=P scripts/pg-standby.sh reset|standby|promote|down
#   reset    wipe DIR, start a fresh primary on P (scripts/pg.sh: roles, app db)
#   standby  base backup of the primary into DIR/standby, started on P+1
#   promote  crash the primary (immediate stop) and promote the standby
#   down     stop both and wipe DIR
# The primary on P and the standby on P+1 are what a multi-host conninfo
# with target_session_attrs=read-write sees before and after a failover.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=${OBX_RUN_DIR:?set OBX_RUN_DIR to a directory of its own}
PORT=${OBX_PG_PORT:?set OBX_PG_PORT}
SPORT=$((PORT + 1))
PGBIN=/usr/lib/postgresql/15/bin
SDATA=$RUN_DIR/standby
SOCK_DIR=$RUN_DIR/pg-sock
export OBX_RUN_DIR OBX_PG_PORT

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_standby() {
    if [ -f "$SDATA/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$SDATA" -m immediate -w stop >/dev/null 2>&1 || true; fi
}

case "${1:-}" in
    reset)
        stop_standby
        "$HERE/pg.sh" stop immediate >/dev/null 2>&1 || true
        rm -rf "$RUN_DIR"
        "$HERE/pg.sh" start ;;
    standby)
        stop_standby
        rm -rf "$SDATA"
        mkdir -p "$SDATA"; chmod 700 "$SDATA"
        [ "$(id -u)" = 0 ] && chown postgres:postgres "$SDATA"
        as_pg "$PGBIN/pg_basebackup" -h "$SOCK_DIR" -p "$PORT" -U postgres -D "$SDATA" -R -X stream -c fast
        # The copied outboxd.conf names the primary's port; the last setting wins.
        echo "port = $SPORT" | as_pg tee -a "$SDATA/postgresql.auto.conf" >/dev/null
        touch "$RUN_DIR/standby.log"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$RUN_DIR/standby.log"
        as_pg "$PGBIN/pg_ctl" -D "$SDATA" -l "$RUN_DIR/standby.log" -w -t 60 start >/dev/null \
            || { tail -n 20 "$RUN_DIR/standby.log" >&2; exit 1; }
        echo "pg-standby.sh: standby of 127.0.0.1:$PORT running on 127.0.0.1:$SPORT" ;;
    promote)
        # Let the standby replay everything the primary has committed first.
        want=$("$PGBIN/psql" -X -h "$SOCK_DIR" -p "$PORT" -U postgres -d postgres -Atc "SELECT pg_current_wal_lsn()")
        for _ in $(seq 1 120); do
            ok=$("$PGBIN/psql" -X -h "$SOCK_DIR" -p "$SPORT" -U postgres -d postgres -Atc \
                 "SELECT pg_last_wal_replay_lsn() >= '$want'::pg_lsn")
            [ "$ok" = t ] && break
            sleep 0.5
        done
        [ "$ok" = t ] || { echo "pg-standby.sh: standby never replayed $want" >&2; exit 1; }
        "$HERE/pg.sh" stop immediate
        as_pg "$PGBIN/pg_ctl" -D "$SDATA" -w promote >/dev/null
        echo "pg-standby.sh: standby on $SPORT promoted" ;;
    down)
        stop_standby
        "$HERE/pg.sh" stop immediate >/dev/null 2>&1 || true
        rm -rf "$RUN_DIR" ;;
    *) echo "usage: $0 reset|standby|promote|down" >&2; exit 2 ;;
esac
