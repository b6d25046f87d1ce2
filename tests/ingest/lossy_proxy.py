"""A real unix-socket proxy in front of a real redis-server that can lose replies: it forwards
every byte both ways, except that once armed it closes the client's connection instead of
forwarding the server's replies: it swallows them for half a second (long enough for a whole
MULTI ... EXEC to run) and then closes (a reply lost after the command ran)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading


class LossyProxy:
    def __init__(self, upstream: str, path: str) -> None:
        self.upstream = upstream
        self.path = path
        self.lose_next_reply = threading.Event()
        self.lost = 0
        self._srv = socket.socket(socket.AF_UNIX)
        self._srv.bind(path)
        os.chmod(path, 0o700)
        self._srv.listen(16)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX)
            u.connect(self.upstream)
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        swallow = False
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if replies and self.lose_next_reply.is_set():
                    self.lose_next_reply.clear()
                    self.lost += 1
                    threading.Timer(0.5, self._cut, args=(src, dst)).start()
                    swallow = True
                if swallow:
                    continue  # the commands run in Redis; their replies never reach the client
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @staticmethod
    def _cut(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self._srv.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
