"""The floor under a broadcast: what one ``os.write`` of an SSE-sized message costs per
subscriber, in a bare Python loop, to connected loopback TCP sockets.

No framework runs here: the loop writes 100 bytes to each of ``N`` accepted sockets
(their clients in this same process, so the receiving side's TCP work is counted too, as
it is when a server broadcasts to clients on the same host). Run it pinned to one CPU, as
the benchmark pins its servers::

    taskset -c 0 python benchmarks/broadcast_floor.py 4000

Prints, for three rounds, the wall time of the loop and its CPU per write. Opens 2 x N
descriptors: N is bounded by the open-files limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import time

MESSAGE = b"data: " + b"x" * 92 + b"\n\n"  # 100 bytes, one SSE event


def connected_pairs(count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """``count`` loopback TCP connections: their client and their server sockets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    address = listener.getsockname()
    clients: list[socket.socket] = []
    servers: list[socket.socket] = []
    for _ in range(count):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(address)
        clients.append(client)
        while len(clients) - len(servers) > 1000:  # (within the listen backlog)
            servers.append(listener.accept()[0])
    while len(servers) < count:
        servers.append(listener.accept()[0])
    listener.close()
    for server in servers:
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return clients, servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("subscribers", type=int, nargs="?", default=4000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients, servers = connected_pairs(args.subscribers)
    descriptors = [server.fileno() for server in servers]
    for round_number in range(3):
        cpu, start = time.process_time(), time.perf_counter()
        for descriptor in descriptors:
            os.write(descriptor, MESSAGE)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"round {round_number + 1}: {len(descriptors):,} writes in {wall * 1000:.1f} ms, "
            f"{cpu / len(descriptors) * 1e6:.2f} µs of CPU per write"
        )
        for client in clients:  # (emptied, so that no socket buffer fills)
            with contextlib.suppress(BlockingIOError):
                client.recv(65536)
    for sock in clients + servers:
        sock.close()


if __name__ == "__main__":
    main()
