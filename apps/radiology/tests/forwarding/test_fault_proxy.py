"""The fault-injecting proxy itself, against a local echo server: each control, with exact byte counts.

No assertion here has an upper bound on time. The bandwidth and latency tests assert a lower
bound only (the proxy cannot deliver sooner than its limits allow, whatever the machine's load);
waits for something to happen are polls with a generous deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from apps.radiology.tests.forwarding.fault_proxy import DOWNSTREAM, IN_FLIGHT_LIMIT, UPSTREAM, FaultProxy

DEADLINE = 30  # seconds for any poll
TIMEOUT = 10  # seconds for any one socket operation


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; remembers how many bytes each connection brought, in accept order."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: 24 connections opened at once through the proxy
    # overflowed it under CI's load, a connect from the proxy failed and the proxy reset its client.
    request_queue_size = 64

    def __init__(self, *, echo: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.echo = echo
        self.received: list[int] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        with self.server.lock:
            index = len(self.server.received)
            self.server.received.append(0)
        if not self.server.echo:  # a far side that never reads: the proxy must stop reading too
            time.sleep(DEADLINE)
            return
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.received[index] += len(data)
                self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port, seed=7) as started:
        yield started


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)


def payload(size: int, salt: int = 0) -> bytes:
    """`size` bytes that differ everywhere, so a reordered or repeated byte would show."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{salt}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` (from a thread) while reading its echo; return what came back before EOF or len(data)."""
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    back = bytearray()
    while len(back) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        back += chunk
    sender.join(timeout=TIMEOUT)
    return bytes(back)


def read_until_closed(sock: socket.socket) -> tuple[bytes, type[BaseException] | None]:
    """Everything the socket still gives, and how it ended: None for EOF, the exception type for a reset."""
    back = bytearray()
    try:
        while chunk := sock.recv(65536):
            back += chunk
    except OSError as error:
        return bytes(back), type(error)
    return bytes(back), None


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {DEADLINE} s")


def test_forwards_both_ways_and_counts_exact_bytes(proxy: FaultProxy, echo: EchoServer) -> None:
    data = payload(1_000_003)
    with connect(proxy) as sock:
        assert exchange(sock, data) == data
    poll(lambda: proxy.counters().downstream == len(data), "the echo counted")
    counters = proxy.counters()
    assert (counters.upstream, counters.downstream, counters.connections, counters.resets) == (
        1_000_003,
        1_000_003,
        1,
        0,
    )
    assert echo.received == [1_000_003]


def test_many_concurrent_connections_each_get_their_own_bytes(proxy: FaultProxy, echo: EchoServer) -> None:
    sizes = [50_000 + 7_919 * index for index in range(24)]
    results: dict[int, bytes] = {}

    def one(index: int) -> None:
        with connect(proxy) as sock:
            results[index] = exchange(sock, payload(sizes[index], salt=index))

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(sizes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    assert {index: hashlib.sha256(data).hexdigest() for index, data in results.items()} == {
        index: hashlib.sha256(payload(size, salt=index)).hexdigest() for index, size in enumerate(sizes)
    }
    poll(lambda: proxy.counters().downstream == sum(sizes), "every echo counted")
    counters = proxy.counters()
    assert (counters.upstream, counters.downstream, counters.connections, counters.resets) == (
        sum(sizes),
        sum(sizes),
        24,
        0,
    )
    assert sorted(echo.received) == sorted(sizes)


def test_cut_after_resets_each_connection_after_exactly_n_bytes(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.cut_after(10_000)
    for _ in range(3):
        with connect(proxy) as sock:
            with contextlib.suppress(OSError):  # the cut may come while sending
                sock.sendall(payload(40_000))
            back, ended_by = read_until_closed(sock)
        assert len(back) <= 10_000
        assert back == payload(40_000)[: len(back)]
        assert ended_by is ConnectionResetError
    poll(lambda: len(echo.received) == 3 and proxy.counters().resets == 3, "three cuts")
    assert echo.received == [10_000, 10_000, 10_000]
    counters = proxy.counters()
    assert (counters.upstream, counters.connections, counters.resets) == (30_000, 3, 3)

    proxy.cut_after(None)
    with connect(proxy) as sock:
        assert exchange(sock, payload(40_000)) == payload(40_000)


def test_cut_after_downstream_counts_the_answers(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.cut_after(5_000, direction=DOWNSTREAM)
    with connect(proxy) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(payload(20_000))
        back, ended_by = read_until_closed(sock)
    assert (back, ended_by) == (payload(5_000), ConnectionResetError)
    assert proxy.counters().downstream == 5_000


def drops_at_random(echo_port: int, seed: int) -> list[int]:
    """Bytes that reached the echo server on each of eight connections cut at random offsets."""
    server_counts: list[int] = []
    with FaultProxy("127.0.0.1", echo_port, seed=seed) as proxy:
        proxy.cut_at_random(1_000, 30_000)
        for _ in range(8):
            with connect(proxy) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(payload(40_000))
                _back, ended_by = read_until_closed(sock)
                assert ended_by is ConnectionResetError
            server_counts.append(proxy.counters().upstream - sum(server_counts))
        assert proxy.counters().resets == 8
    return server_counts


def test_cut_at_random_offsets_are_seeded(echo: EchoServer) -> None:
    first = drops_at_random(echo.port, seed=11)
    assert all(1_000 <= count <= 30_000 for count in first)
    assert len(set(first)) == 8
    poll(lambda: sum(echo.received) == sum(first), "the echo server counted")
    assert echo.received == first
    assert drops_at_random(echo.port, seed=11) == first
    assert drops_at_random(echo.port, seed=12) != first


def test_cut_at_random_with_a_probability_spares_some(proxy: FaultProxy) -> None:
    proxy.cut_at_random(100, 200, probability=0.5)
    outcomes = []
    for _ in range(20):
        with connect(proxy) as sock, contextlib.suppress(ConnectionResetError):
            outcomes.append(exchange(sock, payload(1_000)) == payload(1_000))
            continue
        outcomes.append(False)
    assert 0 < outcomes.count(True) < 20
    assert proxy.counters().resets == outcomes.count(False)


def test_drop_all_resets_every_open_connection_and_new_ones_work(proxy: FaultProxy) -> None:
    socks = [connect(proxy) for _ in range(5)]
    for index, sock in enumerate(socks):
        assert exchange(sock, payload(3_000, salt=index)) == payload(3_000, salt=index)
    assert proxy.drop_all() == 5
    for sock in socks:
        with sock:
            assert read_until_closed(sock) == (b"", ConnectionResetError)
    with connect(proxy) as sock:
        assert exchange(sock, payload(3_000)) == payload(3_000)
    counters = proxy.counters()
    assert (counters.upstream, counters.downstream, counters.connections, counters.resets) == (18_000, 18_000, 6, 5)


def test_drop_every_keeps_resetting(proxy: FaultProxy) -> None:
    proxy.set_drop_every(0.1)
    for _ in range(2):
        with connect(proxy) as sock:
            assert exchange(sock, payload(100)) == payload(100)
            assert read_until_closed(sock) == (b"", ConnectionResetError)
    proxy.set_drop_every(None)
    assert proxy.counters().resets == 2


def test_stall_forwards_nothing_and_closes_nothing_until_resumed(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        assert exchange(sock, payload(1_000)) == payload(1_000)
        proxy.stall()
        sock.sendall(payload(2_000, salt=1))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        assert echo.received == [1_000]
        assert proxy.counters().upstream == 1_000
        proxy.resume()
        sock.settimeout(TIMEOUT)
        back = bytearray()
        while len(back) < 2_000:
            back += sock.recv(65536)
        assert bytes(back) == payload(2_000, salt=1)
    counters = proxy.counters()
    assert (counters.upstream, counters.downstream, counters.resets) == (3_000, 3_000, 0)


def test_stall_for_seconds_resumes_by_itself(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        proxy.stall(0.5)
        started = time.monotonic()
        assert exchange(sock, payload(4_000)) == payload(4_000)
        assert time.monotonic() - started >= 0.5


def test_down_refuses_new_connections_resets_open_ones_and_comes_back_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    sock = connect(proxy)
    assert exchange(sock, payload(500)) == payload(500)
    proxy.go_down()
    assert read_until_closed(sock) == (b"", ConnectionResetError)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.come_up()
    assert proxy.port == port
    with connect(proxy) as sock:
        assert exchange(sock, payload(500)) == payload(500)
    counters = proxy.counters()
    assert (counters.upstream, counters.connections, counters.resets) == (1_000, 2, 1)


def test_down_as_a_black_hole_accepts_and_never_answers(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.go_down(refuse=False)
    with connect(proxy) as sock:
        sock.sendall(payload(700))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        assert echo.received == []
        proxy.come_up()
        sock.settimeout(TIMEOUT)
        assert read_until_closed(sock) == (b"", ConnectionResetError)
    with connect(proxy) as sock:
        assert exchange(sock, payload(700)) == payload(700)
    assert echo.received == [700]


def test_bandwidth_is_one_wire_shared_by_all_connections(proxy: FaultProxy) -> None:
    proxy.set_bandwidth(200_000)
    results: list[bytes] = []

    def one(index: int) -> None:
        with connect(proxy) as sock:
            results.append(exchange(sock, payload(50_000, salt=index)))

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE)
    elapsed = time.monotonic() - started
    assert sorted(results) == sorted(payload(50_000, salt=index) for index in range(4))
    # 200 KB up at 200 KB/s on the one shared wire: at least a second, however the four overlap.
    assert elapsed >= 200_000 / 200_000
    assert proxy.counters().total == 400_000


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.set_latency(0.2, direction=UPSTREAM)
    proxy.set_latency(0.1, direction=DOWNSTREAM)
    with connect(proxy) as sock:
        started = time.monotonic()
        assert exchange(sock, b"x") == b"x"
        assert time.monotonic() - started >= 0.3
        proxy.set_latency(0)
        assert exchange(sock, payload(100_000)) == payload(100_000)


def test_a_far_side_that_does_not_read_holds_the_proxy_to_its_in_flight_limit() -> None:
    """Backpressure: with the far side not reading, the sender blocks; the proxy holds a bounded amount."""
    server = EchoServer(echo=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy("127.0.0.1", server.port) as proxy, connect(proxy) as sock:
            sock.setblocking(False)
            sent = 0
            chunk = payload(65536)
            stuck_since = time.monotonic()
            while time.monotonic() - stuck_since < 1.0:  # until the sender has been blocked for a second
                try:
                    sent += sock.send(chunk)
                    stuck_since = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.01)
            assert 0 < proxy.buffered_bytes() <= IN_FLIGHT_LIMIT
            assert proxy.counters().upstream < sent
            proxy.drop_all()
    finally:
        server.shutdown()
        server.server_close()
