"""The status port keeps answering probes while other clients hold idle
connections (src/common/status_http.h, docs/security.md): connections idle
for 2 s are closed, one address holds at most 8, the port at most 512.

Idle clients are opened from other loopback addresses (127.0.0.2 and up,
which Linux routes to lo) by binding the client socket before connecting:
the probe itself comes from 127.0.0.1, like a kubelet from its node address."""
import socket
import time

from conftest import free_port, http_get

IDLE = 200


def _start(harness, port):
    # Its own slot evidence topic: a rerun must not meet the last run's.
    return harness.start(OUTBOXD_STATUS_LISTEN=f"127.0.0.1:{port}", OUTBOXD_SLOT_EVIDENCE_TOPIC=harness.prefix + ".slots")


def _open_idle(port, sources):
    """One idle TCP connection to the port per source address."""
    socks = []
    for src in sources:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def _close(socks):
    for s in socks:
        s.close()


def _probe(port, path="/healthz", source=None):
    """(status, seconds) of one GET with a 1 s budget, optionally from source."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=1, source_address=(source, 0) if source else None) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.monotonic() - t0


def _closed_by_server(s, wait):
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


def _assert_probes_fast(port, n=5, source=None):
    for _ in range(n):
        status, took = _probe(port, source=source)
        assert status == 200 and took < 1.0, (status, took)
        time.sleep(0.05)


def test_healthz_answers_within_a_second_while_200_idle_connections_are_open(harness):
    port = free_port()
    _start(harness, port)
    assert http_get(port, "/healthz")[0] == 200

    # 200 idle connections from 100 addresses (2 each, under the per-address
    # limit): all are accepted, and the port still has room for the probe.
    sources = [f"127.0.0.{2 + i % 100}" for i in range(IDLE)]
    socks = _open_idle(port, sources)
    try:
        _assert_probes_fast(port)
        _assert_probes_fast(port, n=2, source="127.0.0.2")  # a holder's address still has room
        assert _probe(port, "/readyz")[1] < 1.0
    finally:
        _close(socks)


def test_one_address_cannot_starve_the_others(harness):
    port = free_port()
    _start(harness, port)
    # 200 idle connections from one address: beyond 8 they are closed at once.
    socks = _open_idle(port, ["127.0.0.201"] * IDLE)
    try:
        _assert_probes_fast(port)
        closed = sum(_closed_by_server(s, 0.01) for s in socks[-50:])
        assert closed > 0, "the per-address limit closed nothing"
    finally:
        _close(socks)


def test_idle_connections_are_closed_after_the_timeout(harness):
    port = free_port()
    _start(harness, port)
    socks = _open_idle(port, [f"127.0.0.{2 + i}" for i in range(4)])
    try:
        t0 = time.monotonic()
        assert all(_closed_by_server(s, 5) for s in socks)
        assert time.monotonic() - t0 < 4.5
        # Even idle clients on the probe's own address only delay it until
        # they time out (documented in docs/security.md).
        own = _open_idle(port, ["127.0.0.1"] * 20)
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    if _probe(port)[0] == 200:
                        break
                except (ConnectionResetError, socket.timeout, IndexError, ValueError):
                    pass
                assert time.monotonic() < deadline, "probe from a flooded address never got through"
                time.sleep(0.1)
        finally:
            _close(own)
    finally:
        _close(socks)


def test_refused_connections_write_no_raw_line_to_stderr(harness):
    """libmicrohttpd's "Server reached connection limit" goes through the
    logger (debug, at most a line a second): in JSON mode, 50 connections
    refused by the per-address limit leave no non-JSON line on stderr."""
    import json
    port = free_port()
    p = harness.start(wait=False, OUTBOXD_STATUS_LISTEN=f"127.0.0.1:{port}", OUTBOXD_LOG_FORMAT="json",
                      OUTBOXD_LOG_LEVEL="debug")
    p.wait_for(r'"event":"streaming"')
    assert http_get(port, "/healthz")[0] == 200
    socks = _open_idle(port, ["127.0.0.203"] * 58)
    try:
        closed = sum(_closed_by_server(s, 0.2) for s in socks[8:])
        assert closed > 0, "the per-address limit closed nothing"
        _assert_probes_fast(port, n=2)
    finally:
        _close(socks)
    assert p.stop() == 0
    raw = []
    mhd = 0
    for line in p.log().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            raw.append(line)
            continue
        mhd += rec.get("event") == "status_http"
    assert raw == [], raw[:5]
    assert mhd <= 5, mhd
