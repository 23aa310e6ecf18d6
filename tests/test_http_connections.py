"""`imagedb serve` against clients that hold connections: a request head a byte a second, many connections from
one address, and a request whose body is framed twice (Content-Length and Transfer-Encoding). Real sockets, a
real `imagedb serve` process with a low open-file limit."""

from __future__ import annotations

import http.client
import io
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from PIL import Image

from imagedb.api import create_app
from imagedb.api.connections import HEADER_TIMEOUT_S, MAX_CONNECTIONS_PER_CLIENT, server_config
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.store import Store

OPEN_FILES = 256  # the server's limit: the slow clients below are more than it can hold
SLOW_CLIENTS = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture
def server(database_url: str, photos: Path, tiny_model: str) -> Iterator[int]:
    store = Store(open_connection(database_url))
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    store.close()
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "imagedb", "--database-url", database_url, "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_limit_files,  # noqa: PLW1509 - only sets a limit, before exec
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.2)
        _search(port, timeout=180)  # the model loaded: later searches answer in well under a second
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _search(port: int, source: str = "127.0.0.1", timeout: float = 20) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", "/api/search?q=a+cat&limit=3", headers={"Host": f"localhost:{port}"})
        return conn.getresponse().status
    finally:
        conn.close()


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False  # still open: nothing to read
    except OSError:
        return True  # reset


@pytest.mark.slow
def test_slow_request_heads_are_cut_off_and_a_normal_search_still_answers(server: int) -> None:
    """Before: 300 clients sending a header byte a second held their connections forever, the server ran out of
    file descriptors and a normal search timed out."""
    slow: list[socket.socket] = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", server))
            sock.sendall(b"GET /api/search?q=x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        except OSError:
            sock.close()
            continue
        slow.append(sock)
    started = time.monotonic()
    # One address holds at most its share: the others are closed as soon as the server accepts them.
    held = slow
    while len(held) > MAX_CONNECTIONS_PER_CLIENT and time.monotonic() - started < HEADER_TIMEOUT_S / 2:
        time.sleep(0.2)
        held = [s for s in held if not _closed_by_server(s)]
    assert len(held) <= MAX_CONNECTIONS_PER_CLIENT, len(held)
    for sock in held:
        sock.setblocking(True)
    # A byte a second from those held, while someone else (another loopback address) searches.
    searched = None
    while time.monotonic() - started < HEADER_TIMEOUT_S + 3:
        for sock in held:
            try:
                sock.send(b"a")
            except OSError:
                pass
        if searched is None:
            before = time.monotonic()
            searched = (_search(server, source="127.0.0.2", timeout=10), time.monotonic() - before)
        time.sleep(1)
    assert searched is not None and searched[0] == 200, searched  # before: no answer, a timeout
    # Every slow head was cut off at the header timeout, however many bytes it kept sending.
    still_open = [s for s in held if not _closed_by_server(s)]
    assert not still_open, f"{len(still_open)} of {len(held)} slow connections still open"
    for sock in slow:
        sock.close()
    assert _search(server) == 200


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    sock = socket.create_connection(("127.0.0.1", server))
    sock.settimeout(HEADER_TIMEOUT_S + 5)
    started = time.monotonic()
    assert sock.recv(1024) == b""
    assert HEADER_TIMEOUT_S - 1 < time.monotonic() - started < HEADER_TIMEOUT_S + 3
    sock.close()


@pytest.mark.slow
def test_content_length_with_transfer_encoding_closes_the_connection(server: int) -> None:
    """RFC 9112 6.1: a server MUST close the connection after answering a request with both. Before, the
    connection stayed open for the next request, which a proxy in front may have framed differently."""
    request = (
        f"POST /api/search?q=x HTTP/1.1\r\nHost: localhost:{server}\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):  # ends only when the server closes
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 ") and b"connection: close" in head, head
    # A request framed once keeps its connection open for the next one.
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(f"GET /api/collections HTTP/1.1\r\nHost: localhost:{server}\r\n\r\n".encode())
        time.sleep(1)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
        sock.sendall(f"GET /api/collections HTTP/1.1\r\nHost: localhost:{server}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.fixture
def quick(database_url: str) -> Iterator[int]:
    """The app in a real uvicorn in this process, with the guarded protocol's body timeout shortened to 2 s."""
    port = _free_port()
    config = server_config(
        create_app(database_url), limits={"body_timeout_s": 2.0}, host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_body_sent_a_byte_at_a_time_is_cut_off(quick: int) -> None:
    """With its head in, a request whose body came a byte a second held its connection (and the route waiting
    for the body) for as long as the client liked."""
    head = (
        f"POST /api/search/image HTTP/1.1\r\nHost: localhost:{quick}\r\nContent-Length: 1000\r\n"
        "Content-Type: multipart/form-data; boundary=xx\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", quick), timeout=10) as sock:
        sock.sendall(head + b"--xx\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8 and not closed:
            try:
                sock.sendall(b"a")
                time.sleep(0.5)
            except OSError:
                closed = True
            closed = closed or _closed_by_server(sock)
            sock.setblocking(True)
        assert closed and time.monotonic() - started < 5, time.monotonic() - started
    # A body sent at once is read and answered as before (no collection here: 404 after reading it all).
    image = io.BytesIO()
    Image.new("RGB", (32, 32)).save(image, "PNG")
    body = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png'
    body += b"\r\n\r\n" + image.getvalue() + b"\r\n--xx--\r\n"
    conn = http.client.HTTPConnection("127.0.0.1", quick, timeout=10)
    conn.request(
        "POST",
        "/api/search/image",
        body=body,
        headers={"Host": f"localhost:{quick}", "Content-Type": "multipart/form-data; boundary=xx"},
    )
    answer = conn.getresponse()
    assert answer.status in (200, 404), answer.read()
    conn.close()
