"""A TCP proxy on 127.0.0.1 that the tests can take down and bring back, on the same port.

In front of a service (moto's S3 server, say) it makes a real outage as a client sees it:
:meth:`TcpProxy.stop` closes the listening socket and cuts every open connection, so requests
in flight fail and new connections are refused; :meth:`TcpProxy.start` listens on the same port
again. The service behind it keeps running, and keeps its state.

Threads rather than asyncio: the proxy carries on whatever the test's event loop is doing
(a blocking call in it included).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from oddish.embedded import free_port

ACCEPT_POLL_SEC = 0.1
CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.connections = 0  # accepted since the proxy was made
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen (again) on the proxy's port."""
        assert self._listener is None, "already listening"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_SEC)
        self._stopping.clear()
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept, args=(listener,), name="tcp-proxy-accept", daemon=True
        )
        self._acceptor.start()

    def stop(self) -> None:
        """Stop listening (connections are refused from now on) and cut every open connection."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        assert self._acceptor is not None
        self._acceptor.join(timeout=5)
        listener.close()
        with self._lock:
            cut, self._open = list(self._open), set()
        for sock in cut:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._stopping.is_set():
                    _close(client)
                    _close(upstream)
                    return
                self._open.update((client, upstream))
                self.connections += 1
            pumps_left = [2]  # the connection goes once both directions are done
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink, pumps_left),
                    name="tcp-proxy-pump",
                    daemon=True,
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pumps_left: list[int]) -> None:
        failed = False
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
            # The source closed its side: pass that on; the other direction may go on.
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            failed = True  # cut (by stop) or reset: the whole connection goes
        with self._lock:
            pumps_left[0] = 0 if failed else pumps_left[0] - 1
            if pumps_left[0] > 0:
                return
            self._open.discard(source)
            self._open.discard(sink)
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def tcp_proxy(target_url: str) -> Iterator[TcpProxy]:
    """A started proxy in front of ``http://host:port``; stopped afterwards."""
    host, _, port = target_url.removeprefix("http://").rstrip("/").partition(":")
    proxy = TcpProxy(host, int(port))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
