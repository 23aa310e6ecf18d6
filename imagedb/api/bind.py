"""The listening socket of `imagedb serve`, bound before anything else so that a busy port says so at once."""

from __future__ import annotations

import errno
import ipaddress
import socket

from imagedb.errors import ImagedbError, InvalidInput


class CannotListen(ImagedbError):
    """The address or port cannot be listened on."""

    exit_code = 1
    http_status = 400


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """A token, when given, must be a real one; a server reachable from other machines must have one."""
    if token is not None and not token.strip():
        raise InvalidInput("--token cannot be empty: give a secret, or leave --token out on 127.0.0.1")
    if not is_loopback(host) and not token:
        raise InvalidInput(
            f"listening on {host} needs --token (or IMAGEDB_API_TOKEN): anyone who reaches it could search"
            " and read your images"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; CannotListen says why not in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart while in TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(f"port {port} on {host} is in use: pick another with --port") from exc
        raise CannotListen(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"
