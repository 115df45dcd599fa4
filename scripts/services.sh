#!/usr/bin/env bash
# Start/stop the whole local stack (PostgreSQL + Kafka, each with its TLS
# side from scripts/tls.sh) used by outboxd tests.
# Usage: scripts/services.sh up|down|status
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "${1:-}" in
    # Certificates first: PostgreSQL's ssl = on and Kafka's SASL_SSL/SSL
    # listeners read them at start.
    up)     "$HERE/tls.sh"; "$HERE/pg.sh" start; "$HERE/kafka.sh" start ;;
    # Kafka first: nothing depends on it, and PG stops quickly either way.
    down)   "$HERE/kafka.sh" stop; "$HERE/pg.sh" stop ;;
    status)
        rc=0
        pg=$("$HERE/pg.sh" status) || rc=3
        kafka=$("$HERE/kafka.sh" status) || rc=3
        echo "postgres: $pg"; echo "kafka: $kafka"
        exit $rc ;;
    *)      echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
