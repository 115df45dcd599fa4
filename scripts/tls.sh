#!/usr/bin/env bash
# Test certificates for the secured stack (scripts/kafka.sh SASL_SSL and SSL
# listeners, scripts/pg.sh ssl = on, tests/e2e/test_security.py), made with
# openssl and keytool into $OBX_RUN_DIR/tls. Idempotent: a file that exists
# is kept, so a running broker's keystore is never swapped under it.
# NOT for production: every key is unencrypted or uses a fixed test password.
# Usage: scripts/tls.sh [dir]     Env: OBX_RUN_DIR (default /tmp/outboxd-run)
set -euo pipefail

RUN_DIR=${OBX_RUN_DIR:-/tmp/outboxd-run}
DIR=${1:-$RUN_DIR/tls}
# Fixed test passwords for the Java stores (tests read them from here too).
STOREPASS=obx-test-store
DAYS=825

die() { echo "tls.sh: $*" >&2; exit 1; }
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
command -v keytool >/dev/null || die "keytool not found (apt-get install default-jre-headless)"
mkdir -p "$DIR"
cd "$DIR"

# A CA: NAME.key, NAME.crt.
make_ca() {
    local name=$1 cn=$2
    [ -f "$name.crt" ] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.crt" -days $DAYS \
        -subj "/CN=$cn" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# A leaf signed by CA: NAME.key, NAME.crt. SAN may be empty (client certs).
# Extra args go to `openssl ca` (dates of the expired certificate).
make_leaf() {
    local name=$1 ca=$2 cn=$3 san=$4 usage=$5
    shift 5
    [ -f "$name.crt" ] && return 0
    openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$name.ext"
    # `openssl ca` (not x509 -req) so start and end dates can lie in the past.
    mkdir -p ca-db
    [ -f ca-db/index.txt ] || : >ca-db/index.txt
    cat >ca-db/openssl.cnf <<CNF
[ca]
default_ca = test
[test]
dir = $DIR/ca-db
database = \$dir/index.txt
new_certs_dir = \$dir
serial = \$dir/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
CNF
    [ -f ca-db/serial ] || openssl rand -hex 16 >ca-db/serial
    openssl ca -batch -config ca-db/openssl.cnf -cert "$ca.crt" -keyfile "$ca.key" -in "$name.csr" \
        -out "$name.crt" -extfile "$name.ext" -notext "$@" 2>/dev/null \
        || die "openssl ca failed for $name"
    rm -f "$name.csr" "$name.ext"
}

make_ca ca "outboxd test CA"
make_ca other-ca "unknown test CA"
# librdkafka checks an IP host against DNS names (X509_check_host), libpq
# against IP addresses: the broker and PG certificates carry both.
SERVER_SAN="DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1"
make_leaf broker ca "outboxd-test-broker" "$SERVER_SAN" serverAuth,clientAuth -days $DAYS
make_leaf pg-server ca "outboxd-test-postgres" "$SERVER_SAN" serverAuth -days $DAYS
make_leaf client ca "outboxd-client" "" clientAuth -days $DAYS
# Failure material: a server certificate for another host, an expired
# client certificate (from the right CA), a client from the unknown CA.
make_leaf mismatch ca "wrong.example" "DNS:wrong.example" serverAuth -days $DAYS
make_leaf expired-client ca "outboxd-expired" "" clientAuth -startdate 20200101000000Z -enddate 20200102000000Z
make_leaf other-client other-ca "outboxd-other" "" clientAuth -days $DAYS

# Java stores for the broker: its key in a PKCS12 and a JKS keystore, the
# CA in a JKS truststore (for the client certificates of the SSL listener).
for leaf in broker mismatch; do
    [ -f "$leaf.p12" ] || openssl pkcs12 -export -in "$leaf.crt" -inkey "$leaf.key" -certfile ca.crt \
        -name "$leaf" -out "$leaf.p12" -passout "pass:$STOREPASS"
    [ -f "$leaf.keystore.jks" ] || keytool -importkeystore -noprompt -srckeystore "$leaf.p12" -srcstoretype PKCS12 \
        -srcstorepass "$STOREPASS" -destkeystore "$leaf.keystore.jks" -deststoretype JKS \
        -deststorepass "$STOREPASS" >/dev/null 2>&1
done
[ -f truststore.jks ] || keytool -importcert -noprompt -alias ca -file ca.crt -keystore truststore.jks \
    -storetype JKS -storepass "$STOREPASS" >/dev/null 2>&1

# The PostgreSQL server insists on owning its key with mode 0600.
chmod 600 ./*.key
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    chown postgres:postgres pg-server.key pg-server.crt
fi
chmod o+x "$RUN_DIR" "$DIR" 2>/dev/null || true
chmod o+r ca.crt pg-server.crt 2>/dev/null || true
echo "tls.sh: test CA and certificates in $DIR"
