"""What the server's HTTP and gRPC layers share: a listening socket, its open connections, and
a drain on close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Connection(Protocol):
    def abort(self) -> None:
        """Closes at once, dropping what is unsent."""


C = TypeVar("C", bound=Connection)


class Listener(Generic[C]):
    """Connections register with :meth:`forget`'s counterpart (``connections.add``) when made
    and call :meth:`forget` when lost; :meth:`drain` closes the whole."""

    def __init__(self) -> None:
        self.connections: set[C] = set()
        self.closing = False
        """Set by :meth:`drain`: no new work is taken."""
        self.listening: asyncio.Server | None = None
        self._drained = asyncio.Event()

    async def listen(
        self,
        factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = 2048,
    ) -> tuple[str, int]:
        """Listens on ``host:port`` (0: any free port); returns the bound address. Raises
        OSError."""
        loop = asyncio.get_running_loop()
        self.listening = await loop.create_server(
            factory, host, port, reuse_port=reuse_port, backlog=backlog
        )
        bound = self.listening.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def drain(self, timeout: float, farewell: Callable[[C], None]) -> None:
        """Stops accepting, calls ``farewell`` on every connection (which ends it once its
        work in flight is answered), waits up to ``timeout`` seconds for all to end, then
        aborts what is left."""
        self.closing = True
        if self.listening is not None:
            self.listening.close()
        for conn in list(self.connections):
            farewell(conn)
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        for conn in list(self.connections):
            conn.abort()
        if self.listening is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listening.wait_closed(), 1.0)

    def forget(self, conn: C) -> None:
        """A connection has ended."""
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self._drained.set()
