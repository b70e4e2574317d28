"""A fault-injecting TCP proxy: the bad 3G link between a clinic and its regional PACS-lite.

Used by the two-server store-and-forward tests and by bench/forward.py. Our own, small, because
the well-kept tool for this, Shopify's toxiproxy, is not packaged in Debian here, and its PyPI
clients (toxiproxy-python) only drive toxiproxy's Go server, which we would have to fetch as a
binary from outside any package manager.

The proxy is an asyncio server run on its own event loop in a background thread; every control
is a plain method called from the test's thread, in effect when it returns. It models a modem:
- bandwidth: each direction is one shared wire (`set_bandwidth`): bytes of every connection
  queue for it, one after another, as on a modem, not a per-connection limit;
- latency: each direction adds a delay after a byte crossed the wire (`set_latency`), without
  holding the wire (a bandwidth-delay product is in flight, as on a real link);
- faults: reset every connection now (`drop_all`, an RST, not a polite FIN), reset each new
  connection after exactly N bytes in one direction (`cut_after`) or at seeded-random offsets
  (`cut_at_random`), reset all connections every S seconds (`set_drop_every`), stop forwarding
  without closing (`stall`), be down (`go_down`: new connections refused, or accepted and never
  answered) and come back (`come_up`, on the same port);
- counters: bytes delivered each direction, connections accepted, connections reset.

Backpressure: a direction of a connection reads from its source only while fewer than
IN_FLIGHT_LIMIT bytes are read and not yet written to its destination, and only as many bytes
as the wire can carry next, so a slow or stalled far side slows the sender (TCP's own flow
control) instead of filling this process's memory, however many connections are open. (Beyond
that, asyncio's own buffers are bounded too: a StreamReader pauses reading at 128 KiB, a write
waits in drain() above 64 KiB.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

UPSTREAM = "upstream"  # client -> server: the forwarder's requests
DOWNSTREAM = "downstream"  # server -> client: the answers
DIRECTIONS = (UPSTREAM, DOWNSTREAM)

READ_SIZE = 64 * 1024
IN_FLIGHT_LIMIT = 256 * 1024  # bytes read and not yet written, per connection and direction
WIRE_SLICE_SECONDS = 0.02  # a bandwidth-limited read takes at most this much wire time (fair sharing)
MIN_SLICE = 512

T = TypeVar("T")


@dataclass(frozen=True)
class Counters:
    """What went through: bytes delivered to the far end of each direction, connections accepted and reset."""

    upstream: int
    downstream: int
    connections: int
    resets: int

    @property
    def total(self) -> int:
        return self.upstream + self.downstream


class _Wire:
    """One direction's shared wire: `rate` bytes/s for all connections together, then `latency` s."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.latency = 0.0
        self.free_at = 0.0  # loop time when the last reserved byte has crossed

    def slice_size(self) -> int:
        if self.rate is None:
            return READ_SIZE
        return max(MIN_SLICE, min(READ_SIZE, int(self.rate * WIRE_SLICE_SECONDS)))

    async def carry(self, size: int) -> float:
        """Wait until `size` bytes crossed the wire after everything reserved before; return when they arrive."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.rate is not None:
            self.free_at = max(now, self.free_at) + size / self.rate
            await asyncio.sleep(self.free_at - now)
        return loop.time() + self.latency


class _Budget:
    """Bytes a pump may hold (read, not yet written): reserved before a read, given back once written."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.carried = 0  # read and not yet written
        self._changed = asyncio.Condition()

    async def take(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= size)
            self.free -= size

    async def give(self, size: int) -> None:
        async with self._changed:
            self.free += size
            self._changed.notify_all()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    cut_direction: str = UPSTREAM
    cut_at: int | None = None  # reset once this many bytes went in cut_direction
    delivered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    budgets: dict[str, _Budget] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # directions whose source said EOF
    closed: bool = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [writer for writer in (self.client, self.server) if writer is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a link that died does, not with a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """127.0.0.1:<port> -> upstream; see the module docstring. Use as a context manager or start()/close()."""

    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.random = random.Random(seed)  # noqa: S311 (seeded faults, not secrets)
        self.port = 0
        self._wires = {direction: _Wire() for direction in DIRECTIONS}
        self._connections: set[_Connection] = set()
        self._delivered = dict.fromkeys(DIRECTIONS, 0)
        self._accepted = 0
        self._resets = 0
        self._cut: tuple[str, int, int, float] | None = None  # direction, low, high, probability
        self._down: str | None = None  # None (up), "refuse" or "blackhole"
        self._held: list[asyncio.StreamWriter] = []  # blackholed clients
        self._server: asyncio.base_events.Server | None = None
        self._drop_every_task: asyncio.Task[None] | None = None
        self._stall_task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._flowing: asyncio.Event | None = None

    # --- Life cycle (test thread) ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start)
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Controls (test thread; each in effect when it returns) -----------------------------

    def set_bandwidth(self, bytes_per_second: float | None, *, direction: str | None = None) -> None:
        """Limit each direction (or one) to `bytes_per_second`, shared by all connections; None: unlimited."""
        self._call(self._set_wires, "rate", bytes_per_second, direction)

    def set_latency(self, seconds: float, *, direction: str | None = None) -> None:
        """Delay each byte by `seconds` in each direction (or one)."""
        self._call(self._set_wires, "latency", seconds, direction)

    def drop_all(self) -> int:
        """Reset every open connection now; return how many."""
        return self._call(self._drop_all)

    def cut_after(self, size: int | None, *, direction: str = UPSTREAM) -> None:
        """Reset each connection opened from now on once exactly `size` bytes went in `direction`; None: never."""
        self._call(self._set_cut, None if size is None else (direction, size, size, 1.0))

    def cut_at_random(self, low: int, high: int, *, probability: float = 1.0, direction: str = UPSTREAM) -> None:
        """Each connection opened from now on is, with `probability`, reset after a number of bytes in
        `direction` drawn uniformly from [low, high] (the proxy's seeded random generator)."""
        self._call(self._set_cut, (direction, low, high, probability))

    def set_drop_every(self, seconds: float | None) -> None:
        """Reset every open connection every `seconds` (a flaky modem); None: stop."""
        self._call(self._set_drop_every, seconds)

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding (nothing is closed) until resume(), or for `seconds`."""
        self._call(self._stall, seconds)

    def resume(self) -> None:
        self._call(self._resume)

    def go_down(self, *, refuse: bool = True) -> None:
        """The link is down: every connection is reset, and new ones are refused (`refuse`) or
        accepted and never answered (a black hole: the client's own timeout has to notice)."""
        self._call(self._go_down, "refuse" if refuse else "blackhole")

    def come_up(self) -> None:
        """The link is back, on the same port."""
        self._call(self._come_up)

    def counters(self) -> Counters:
        return self._call(self._counters)

    def buffered_bytes(self) -> int:
        """Bytes read from one side and not yet written to the other, over every connection."""
        return self._call(self._buffered)

    # --- The loop's side ------------------------------------------------------------------

    def _call(self, function: Callable[..., Awaitable[T] | T], *args: Any) -> T:
        async def run() -> T:
            result = function(*args)
            if asyncio.iscoroutine(result):
                return await result  # type: ignore[no-any-return]
            return result  # type: ignore[return-value]

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for task in (self._drop_every_task, self._stall_task):
            if task is not None:
                task.cancel()
        if self._server is not None:
            self._server.close()
        self._drop_all()
        for writer in self._held:
            _reset(writer)
        pending = [task for connection in self._connections for task in connection.tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _set_wires(self, attribute: str, value: float | None, direction: str | None) -> None:
        for name in (direction,) if direction else DIRECTIONS:
            setattr(self._wires[name], attribute, value)

    def _set_cut(self, cut: tuple[str, int, int, float] | None) -> None:
        self._cut = cut

    def _drop_all(self) -> int:
        live = [connection for connection in self._connections if not connection.closed]
        for connection in live:
            self._close(connection, reset=True)
        return len(live)

    def _set_drop_every(self, seconds: float | None) -> None:
        if self._drop_every_task is not None:
            self._drop_every_task.cancel()
            self._drop_every_task = None
        if seconds is not None:

            async def drop_forever() -> None:
                while True:
                    await asyncio.sleep(seconds)
                    self._drop_all()

            self._drop_every_task = asyncio.get_running_loop().create_task(drop_forever())

    def _stall(self, seconds: float | None) -> None:
        assert self._flowing is not None
        self._flowing.clear()
        if self._stall_task is not None:
            self._stall_task.cancel()
            self._stall_task = None
        if seconds is not None:

            async def resume_later() -> None:
                await asyncio.sleep(seconds)
                self._resume()

            self._stall_task = asyncio.get_running_loop().create_task(resume_later())

    def _resume(self) -> None:
        assert self._flowing is not None
        self._flowing.set()

    def _go_down(self, mode: str) -> None:
        self._down = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        self._drop_all()

    async def _come_up(self) -> None:
        self._down = None
        for writer in self._held:
            _reset(writer)
        self._held.clear()
        if self._server is None:
            await self._listen()

    def _counters(self) -> Counters:
        return Counters(self._delivered[UPSTREAM], self._delivered[DOWNSTREAM], self._accepted, self._resets)

    def _buffered(self) -> int:
        return sum(budget.carried for connection in self._connections for budget in connection.budgets.values())

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        if self._down == "blackhole":
            self._held.append(client_writer)
            return
        connection = _Connection(client=client_writer)
        if self._cut is not None:
            direction, low, high, probability = self._cut
            if self.random.random() < probability:
                connection.cut_direction, connection.cut_at = direction, self.random.randint(low, high)
        self._connections.add(connection)
        try:
            server_reader, connection.server = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._close(connection, reset=True)
            return
        if connection.closed:  # dropped while connecting
            _reset(connection.server)
            return
        loop = asyncio.get_running_loop()
        connection.tasks.extend(
            [
                loop.create_task(self._pump(connection, UPSTREAM, client_reader, connection.server)),
                loop.create_task(self._pump(connection, DOWNSTREAM, server_reader, client_writer)),
            ]
        )

    async def _pump(
        self, connection: _Connection, direction: str, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        """One direction of one connection: read what the wire can carry, carry it, deliver it after the latency."""
        assert self._flowing is not None
        wire = self._wires[direction]
        budget = connection.budgets[direction] = _Budget(IN_FLIGHT_LIMIT)
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        writer_task = asyncio.get_running_loop().create_task(self._deliver(connection, direction, queue, sink))
        connection.tasks.append(writer_task)
        try:
            while not connection.closed:
                await self._flowing.wait()
                size = wire.slice_size()
                await budget.take(size)
                data = await source.read(size)
                await budget.give(size - len(data))
                budget.carried += len(data)
                if not data:
                    queue.put_nowait(None)
                    return
                arrives_at = await wire.carry(len(data))
                queue.put_nowait((arrives_at, data))
        except (ConnectionError, OSError):
            self._close(connection, reset=True)

    async def _deliver(
        self, connection: _Connection, direction: str, queue: asyncio.Queue[tuple[float, bytes] | None], sink: Any
    ) -> None:
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        budget = connection.budgets[direction]
        try:
            while not connection.closed:
                item = await queue.get()
                if item is None:
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                    connection.ended.add(direction)
                    if len(connection.ended) == len(DIRECTIONS):  # both sides said EOF: close politely
                        self._close(connection, reset=False)
                    return
                arrives_at, data = item
                if arrives_at > loop.time():
                    await asyncio.sleep(arrives_at - loop.time())
                await self._flowing.wait()
                cut = (
                    connection.cut_at - connection.delivered[direction]
                    if connection.cut_at is not None and direction == connection.cut_direction
                    else None
                )
                if cut is not None and cut <= len(data):
                    data = data[:cut]
                if connection.closed:
                    return
                sink.write(data)
                await sink.drain()
                connection.delivered[direction] += len(data)
                self._delivered[direction] += len(data)
                budget.carried -= len(item[1])
                await budget.give(len(item[1]))
                if cut is not None and cut <= len(data):
                    self._close(connection, reset=True)
                    return
        except (ConnectionError, OSError):
            self._close(connection, reset=True)

    def _close(self, connection: _Connection, *, reset: bool) -> None:
        if connection.closed:
            return
        connection.closed = True
        if reset:
            self._resets += 1
        for writer in connection.writers():
            if reset:
                _reset(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for task in connection.tasks:
            if task is not current:
                task.cancel()
        self._connections.discard(connection)
