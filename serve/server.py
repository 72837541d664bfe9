"""Any ASGI app (a Starlette app) on uvicorn, set up for clients that may be hostile.

uvicorn answers malformed requests (a NUL or a non-ASCII byte in the request line, a header too large)
400 itself, drops writes to clients that hung up without a traceback, and closes a kept-alive
connection ``timeout_keep_alive`` seconds after its last response. :class:`GuardedProtocol` adds what it
lacks: a deadline for connections that never finish a request head (one opened and left idle, or one
trickling a header a byte at a time), and a clean end for a request whose body turns out malformed.
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import threading
from typing import Any, Awaitable, Callable, Optional

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from capkit.serve import LOG_ENV

IDLE_TIMEOUT_S = 10.0  # a connection has this long to send a whole request head, from its start or its last response
KEEP_ALIVE_S = 5  # uvicorn's own: an idle kept-alive connection is closed this long after its last response
BACKLOG = 1024  # connections waiting to be accepted (the kernel caps it at net.core.somaxconn)
SHUTDOWN_S = 5  # shutdown() waits this long for responses in flight, then cancels them


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``; OSError (its strerror one line, e.g. "Address already in
    use", "Name or service not known") when it cannot. (socket.create_server adds the address to strerror.)"""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses the port at once
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with two guards:

    - a deadline for the request head: a connection that is not being answered (just opened, or between
      requests) is closed when no complete request head has arrived within ``idle_timeout`` seconds, however
      slowly its bytes trickle in. A response in flight is never cut.
    - a malformed request body (a bad chunk size) after a good head: uvicorn answers 400 at once, and the
      app's own answer to that request, sent next, made h11 raise (a traceback, "Exception in ASGI
      application"); the app now finds the request hung up instead, as after a client's reset.
    """

    idle_timeout = IDLE_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._arm_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's sends are dropped, as after a hang-up
        super().send_400_response(msg)

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.idle_timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete
        if not answering and not self.transport.is_closing():
            self.transport.close()


class DrainingUvicorn(uvicorn.Server):
    """uvicorn's server with a graceful drain: on the first SIGTERM or Ctrl+C it keeps serving while ``drain()``
    (a coroutine: the app answers new work 503 and finishes what it took on) runs, then shuts down as uvicorn
    does, and exits normally; a second signal stops at once, as in uvicorn."""

    def __init__(self, config: uvicorn.Config, drain: Optional[Callable[[], Awaitable[None]]]) -> None:
        super().__init__(config)
        self._drain, self._loop, self._draining = drain, None, False

    async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain is None or self._loop is None or self._draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain)  # a signal handler: only hand it to the loop

    def _start_drain(self) -> None:
        assert self._drain is not None and self._loop is not None
        task = self._loop.create_task(self._drain())
        task.add_done_callback(lambda _: setattr(self, "should_exit", True))


class Server:
    """``app`` on uvicorn, listening on ``host``:``port`` from the moment it is made (port 0: a free port,
    :attr:`port` says which), so that an address in use is an OSError here rather than a log line later.
    :meth:`serve_forever` serves in the calling thread until :meth:`shutdown` (from another thread) or
    Ctrl+C (KeyboardInterrupt, in the main thread); :meth:`start` serves in a daemon thread instead.

    Quiet unless ``log`` (default: whether CAPKIT_SERVE_LOG is set): then uvicorn's start-up lines and one
    access line per request, all on stderr. Errors inside the app are logged either way (they are bugs)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000, *, log: Optional[bool] = None,
                 idle_timeout: float = IDLE_TIMEOUT_S, sock: Optional[socket.socket] = None,
                 drain: Optional[Callable[[], Awaitable[None]]] = None, limit_concurrency: Optional[int] = None) -> None:
        """``sock``: a socket listening already (a worker process's, shared); ``drain``: see
        :class:`DrainingUvicorn`; ``limit_concurrency``: uvicorn's (connections and tasks, 503 past it)."""
        log = bool(os.environ.get(LOG_ENV)) if log is None else log
        protocol = type("Protocol", (GuardedProtocol,), {"idle_timeout": idle_timeout})
        logging = copy.deepcopy(LOGGING_CONFIG)
        logging["handlers"]["access"]["stream"] = "ext://sys.stderr"  # uvicorn's default is stdout: ours is for data
        config = uvicorn.Config(app, http=protocol, lifespan="auto", log_config=logging,
                                log_level="info" if log else "error", access_log=log, timeout_keep_alive=KEEP_ALIVE_S, backlog=BACKLOG,
                                timeout_graceful_shutdown=SHUTDOWN_S, proxy_headers=False, server_header=False,
                                limit_concurrency=limit_concurrency)
        self.socket = sock if sock is not None else listen(host, port)
        self._uvicorn = DrainingUvicorn(config, drain)
        self._stopped = threading.Event()
        self._stopped.set()  # not serving

    @property
    def server_address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def start(self) -> "Server":
        self._stopped.clear()  # here too: a shutdown() right after start() waits for the thread
        threading.Thread(target=self.serve_forever, name=f"capkit-serve-{self.port}", daemon=True).start()
        return self

    def shutdown(self, timeout: float = SHUTDOWN_S + 5) -> None:
        """Stops :meth:`serve_forever` and waits (at most ``timeout`` seconds) until it has returned."""
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


__all__ = ["BACKLOG", "IDLE_TIMEOUT_S", "KEEP_ALIVE_S", "DrainingUvicorn", "GuardedProtocol", "Server", "listen"]
