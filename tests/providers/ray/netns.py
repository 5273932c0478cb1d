"""Run this process's main thread in a network namespace that has only loopback, and back.

Ray's listeners may bind every interface, so the Ray tests run where there is no other
interface (DESIGN.md, Testing without a cloud). A namespace belongs to a thread: after
``enter()`` the calling thread, and every process or thread it starts from then on, sees only
``lo``; threads started before keep the old namespace. ``leave()`` goes back, so the tests that
run after the Ray tests in the same pytest session see the machine's network as before.

Needs CAP_SYS_ADMIN (root, or a user namespace granting it); what cannot be done raises
``NamespaceError``, which the fixture turns into a failure, never a skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1


class NamespaceError(RuntimeError):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"{what} failed: {os.strerror(err)} (errno {err})")


def interfaces() -> list[str]:
    """The network interfaces this thread sees."""
    return [name for _, name in socket.if_nameindex()]


def _loopback_up() -> None:
    """``ip link set lo up``, with the ioctl ``ip`` uses (no dependency on iproute2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


class LoopbackNamespace:
    """``with LoopbackNamespace():`` the block (and what it starts) runs with only ``lo``."""

    def __init__(self) -> None:
        self._home: int | None = None

    def enter(self) -> None:
        self._home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        try:
            _check(_libc().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _loopback_up()
        except Exception:
            self.leave()
            raise
        if interfaces() != ["lo"]:
            self.leave()
            raise NamespaceError("the new network namespace has interfaces besides lo")

    def leave(self) -> None:
        if self._home is None:
            return
        try:
            _check(_libc().setns(self._home, CLONE_NEWNET), "setns(back to the host's network)")
        finally:
            os.close(self._home)
            self._home = None

    def __enter__(self) -> LoopbackNamespace:
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()
