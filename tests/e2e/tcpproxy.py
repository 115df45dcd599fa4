"""A TCP proxy the chaos tests control: forward, or cut every connection
(reset) and refuse new ones until restored."""
import socket
import threading


class TcpProxy:
    def __init__(self, listen_port, target_port, host="127.0.0.1"):
        self.target = (host, target_port)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((host, listen_port))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.up = True
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                if not self.up:
                    self._reset(c)
                    continue
            try:
                s = socket.create_connection(self.target, timeout=5)
                s.settimeout(None)
            except OSError:
                self._reset(c)
                continue
            with self.lock:
                self.conns += [c, s]
            threading.Thread(target=self._pipe, args=(c, s), daemon=True).start()
            threading.Thread(target=self._pipe, args=(s, c), daemon=True).start()

    @staticmethod
    def _reset(sock):
        try:
            # SO_LINGER 0: close with RST, as a dropped route or a killed peer would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
        except OSError:
            pass

    def _pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            self.up = False
            conns, self.conns = self.conns, []
        for s in conns:
            self._reset(s)

    def restore(self):
        with self.lock:
            self.up = True

    def close(self):
        self.closed = True
        self.cut()
        self.srv.close()
