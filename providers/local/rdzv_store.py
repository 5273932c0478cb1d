"""Host torchrun's c10d rendezvous TCPStore on 127.0.0.1 only.

torchrun's own host agent would create this store listening on every interface, and TCPStore
has no bind-address parameter. It does accept an already-listening socket
(``master_listen_fd``), so the supervisor runs this tiny process, which binds loopback itself,
and starts every agent with ``is_host=false``. The same store also serves the workers'
``MASTER_ADDR:MASTER_PORT`` (torchrun shares the rendezvous store with them), so nothing of a
local job listens beyond loopback. Runs until SIGTERM.
"""

from __future__ import annotations

import datetime
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    store = TCPStore(
        host,
        port,
        is_master=True,
        timeout=datetime.timedelta(seconds=600),
        wait_for_workers=False,
        master_listen_fd=sock.fileno(),
        use_libuv=False,  # the libuv server cannot adopt a listening fd
    )
    print(f"rendezvous store on {host}:{port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del store
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main(sys.argv))
