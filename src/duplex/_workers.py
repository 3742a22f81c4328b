"""Workers: N server processes on one port (SO_REUSEPORT) under a supervisor.

The supervisor starts each worker as ``python -m duplex serve SPEC --worker``, restarts
one that dies, forwards SIGINT/SIGTERM so the workers shut down gracefully, and gives up
with a clear error if workers keep failing before they are ready.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import trio

__all__ = ["WorkersFailed", "serve_workers"]

log = logging.getLogger("duplex.workers")

#: Consecutive workers that may exit before they are ready before the supervisor gives up.
MAX_START_FAILURES = 3
#: Seconds a worker has to report that it is serving.
START_TIMEOUT = 30.0


class WorkersFailed(RuntimeError):
    """Workers kept failing before they were ready (an import error, a port in use)."""


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) so that port 0 becomes one real port all workers share.

    A bound socket that does not listen takes no connections; SO_REUSEPORT lets the
    workers bind the same port beside it. It binds before it sets SO_REUSEPORT, so that
    a port another server holds is refused even if that server shares with SO_REUSEPORT
    (the workers would silently split the traffic with it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError as error:
        sock.close()
        raise WorkersFailed(f"cannot bind {host}:{port}: {error.strerror}") from error
    return sock


class _Supervisor:
    def __init__(self, spec: str, host: str, port: int, workers: int, grace: float) -> None:
        self.spec = spec
        self.host = host
        self.port = port
        self.workers = workers
        self.grace = grace
        self.processes: set[trio.Process] = set()
        self.stopping = False
        self.start_failures = 0
        self.restarts = 0
        #: More options for each worker's command line.
        self.arguments: list[str] = []

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "duplex",
            "serve",
            self.spec,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--worker",
            *self.arguments,
        ]

    async def keep_one(self, index: int, ready: trio.Event) -> None:
        """Run worker ``index`` and restart it whenever it dies, until stopping."""
        while not self.stopping:
            process = await trio.lowlevel.open_process(self.command(), stdout=subprocess.PIPE)
            self.processes.add(process)
            started = await self._wait_ready(process)
            if started:
                self.start_failures = 0
                ready.set()
                log.info("worker %d (pid %d) is serving", index, process.pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, process)
                await process.wait()
            self.processes.discard(process)
            if self.stopping:
                return
            if not started:
                self.start_failures += 1
                if self.start_failures >= MAX_START_FAILURES:
                    raise WorkersFailed(
                        f"workers keep failing at start ({self.start_failures} in a row; "
                        f"last exit status {process.returncode}): is {self.spec!r} importable "
                        f"and {self.host}:{self.port} free?"
                    )
            self.restarts += 1
            status = process.returncode
            log.warning("worker %d (pid %d) exited with %s; restarting", index, process.pid, status)

    async def _wait_ready(self, process: trio.Process) -> bool:
        """True once the worker prints its serving line; False if it exits first."""
        assert process.stdout is not None
        buffered = b""
        with trio.move_on_after(START_TIMEOUT):
            while b"serving on" not in buffered:
                data = await process.stdout.receive_some(4096)
                if not data:
                    return False
                buffered += data
            return True
        process.kill()
        return False

    async def stop(self) -> None:
        """Ask every worker to shut down gracefully; kill what is left after the grace."""
        self.stopping = True
        for process in list(self.processes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.grace + 5.0):
            for process in list(self.processes):
                await process.wait()
        for process in list(self.processes):
            if process.returncode is None:
                process.kill()


async def _drain(process: trio.Process) -> None:
    """Keep reading a worker's standard output so that it never blocks on a full pipe."""
    assert process.stdout is not None
    while await process.stdout.receive_some(4096):
        pass


async def serve_workers(
    spec: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    workers: int = 2,
    shutdown_grace: float = 10.0,
    worker_arguments: Sequence[str] = (),
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the handler named ``spec`` (``"module:attribute"``) from ``workers``
    processes sharing ``host``:``port``, until SIGINT/SIGTERM or cancellation;
    ``worker_arguments`` go on each worker's ``duplex serve`` command line (``--certfile
    cert.pem``).

    ``task_status.started`` receives the port once every worker is serving. Raises
    ``WorkersFailed`` if workers keep exiting before they are ready.
    """
    reserved = _reserve_port(host, port)
    supervisor = _Supervisor(spec, host, reserved.getsockname()[1], workers, shutdown_grace)
    supervisor.arguments = list(worker_arguments)
    try:
        await _supervise(supervisor, workers, task_status)
    except BaseExceptionGroup as group:
        # The only error a worker's keeper raises is WorkersFailed: give it back unwrapped.
        failed, rest = group.split(WorkersFailed)
        if failed is None or rest is not None:
            raise
        leaf: BaseException = failed
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    finally:
        with trio.CancelScope(shield=True):
            await supervisor.stop()
        reserved.close()


async def _supervise(supervisor: _Supervisor, workers: int, task_status: Any) -> None:
    # Listening from the start: a signal while the workers start stops them as well,
    # rather than ending the supervisor and leaving them behind.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            readiness = [trio.Event() for _ in range(workers)]
            for index, ready in enumerate(readiness):
                nursery.start_soon(supervisor.keep_one, index, ready)
            nursery.start_soon(_announce, readiness, supervisor.port, task_status)
            async for signum in signals:
                log.info("received %s, stopping the workers", signal.Signals(signum).name)
                break
            with trio.CancelScope(shield=True):
                await supervisor.stop()
            nursery.cancel_scope.cancel()


async def _announce(readiness: list[trio.Event], port: int, task_status: Any) -> None:
    for ready in readiness:
        await ready.wait()
    task_status.started(port)
