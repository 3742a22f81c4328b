"""Workers: N server processes on one port under a supervisor, restarted one at a time.

The supervisor holds the listening sockets: one per worker, all on one port with
``SO_REUSEPORT`` (the kernel spreads new connections over them), or one that every
worker shares where ``SO_REUSEPORT`` is missing. Each worker runs as ``python -m duplex
serve SPEC --worker FD`` and accepts on the socket it inherits as descriptor FD.

Because the supervisor holds every socket, a worker that stops never takes a socket
with it: the connections queued in its accept backlog wait there for the next worker
on that socket instead of being reset. That is what makes a rolling restart lose
nothing. On SIGHUP the supervisor replaces its workers one at a time: it starts the new
worker on the old one's socket, waits until it serves, then sends the old one SIGHUP,
and the old one stops accepting and finishes its exchanges like a shutdown (WebSocket
channels close with 1012, "service restart"; idle keep-alive connections close between
requests).

The supervisor also restarts a worker that dies, forwards SIGINT/SIGTERM so that the
workers shut down gracefully, and gives up with a clear error if workers keep failing
before they are ready.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import Any

import trio

from .http._platform import capabilities

__all__ = ["WorkersFailed", "serve_workers"]

log = logging.getLogger("duplex.workers")

#: Consecutive workers that may exit before they are ready before the supervisor gives up.
MAX_START_FAILURES = 3
#: Seconds a worker has to report that it is serving.
START_TIMEOUT = 30.0
#: Seconds a worker may take beyond the grace period to exit once asked to.
EXIT_MARGIN = 5.0
#: The listen backlog of each socket (as ``duplex.Server``'s own).
BACKLOG = 1024


class WorkersFailed(RuntimeError):
    """Workers kept failing before they were ready (an import error, a port in use)."""


def _listening_sockets(host: str, port: int, count: int, reuse_port: bool) -> list[socket.socket]:
    """``count`` sockets listening on ``host``:``port`` (port 0: one free port for all),
    one per worker with ``reuse_port``, else the same one ``count`` times.

    The first binds before it sets ``SO_REUSEPORT``, so that a port another server holds
    is refused even if that server shares with ``SO_REUSEPORT`` (the workers would
    silently split the traffic with it). Raises ``WorkersFailed`` if it cannot bind.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for index in range(count if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if index:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            if reuse_port and not index:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise WorkersFailed(f"cannot bind {host}:{port}: {error.strerror}") from error
    return sockets if reuse_port else sockets * count


class _Worker:
    """One worker process, from its start to its exit."""

    def __init__(self, slot: int, process: trio.Process) -> None:
        self.slot = slot
        self.process = process
        #: True once it has said that it serves (decided is then set).
        self.ready = False
        #: Set once it serves, or has failed (or been killed) before it did.
        self.decided = trio.Event()
        self.exited = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid


class _Supervisor:
    def __init__(
        self,
        spec: str,
        host: str,
        sockets: list[socket.socket],
        grace: float,
        arguments: Sequence[str],
    ) -> None:
        self.spec = spec
        self.host = host
        self.sockets = sockets
        self.port: int = sockets[0].getsockname()[1]
        self.grace = grace
        #: More options for each worker's command line.
        self.arguments = list(arguments)
        #: The worker serving each slot (socket); None until one is ready.
        self.slots: list[_Worker | None] = [None] * len(sockets)
        # Held while a slot's worker is being started, so that a rolling restart and a
        # worker's replacement after a crash never both start one.
        self.locks = [trio.Lock() for _ in sockets]
        self.processes: set[trio.Process] = set()
        self.stopping = False
        self.start_failures = 0
        #: Where each worker's own task runs (set by ``run``).
        self.nursery: trio.Nursery

    def command(self, fd: int) -> list[str]:
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
            str(fd),
            *self.arguments,
        ]

    async def launch(self, slot: int) -> _Worker:
        """Start a worker on ``slot``'s socket; return once it serves (``ready``) or has
        failed to."""
        fd = self.sockets[slot].fileno()
        process = await trio.lowlevel.open_process(
            self.command(fd), stdout=subprocess.PIPE, pass_fds=(fd,)
        )
        self.processes.add(process)
        worker = _Worker(slot, process)
        self.nursery.start_soon(self._watch, worker)
        await worker.decided.wait()
        return worker

    async def _watch(self, worker: _Worker) -> None:
        process = worker.process
        try:
            worker.ready = await _wait_ready(process)
            worker.decided.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, process)
                await process.wait()
            self.processes.discard(process)
        finally:
            worker.decided.set()
            worker.exited.set()

    async def _serving(self, slot: int) -> _Worker:
        """The worker serving ``slot``, started if it has none (which may then have
        failed to start: ``ready`` is False)."""
        async with self.locks[slot]:
            current = self.slots[slot]
            if current is not None and not current.exited.is_set():
                return current
            worker = await self.launch(slot)
            if worker.ready:
                self.slots[slot] = worker
                self.start_failures = 0
                log.info("worker %d (pid %d) is serving", slot, worker.pid)
            return worker

    async def keep(self, slot: int, ready: trio.Event) -> None:
        """Keep a worker serving on ``slot`` until stopping: start one, and another
        whenever it dies (one that a rolling restart replaced is simply let go)."""
        while not self.stopping:
            worker = await self._serving(slot)
            if worker.ready:
                ready.set()
            await worker.exited.wait()
            if self.stopping:
                return
            if worker.ready and self.slots[slot] is not worker:
                continue  # replaced by a rolling restart: watch its successor
            status = worker.process.returncode
            if not worker.ready:
                self.start_failures += 1
                if self.start_failures >= MAX_START_FAILURES:
                    raise WorkersFailed(
                        f"workers keep failing at start ({self.start_failures} in a row; "
                        f"last exit status {status}); their own errors are above (is "
                        f"{self.spec!r} importable, does its lifespan start?)"
                    )
            log.warning("worker %d (pid %d) exited with %s; restarting", slot, worker.pid, status)

    async def restart(self) -> None:
        """Replace every worker, one at a time: start the new one on the old one's
        socket, wait until it serves, then ask the old one to finish (SIGHUP). A
        replacement that fails to start ends the restart; the old workers serve on."""
        replaced = 0
        for slot in range(len(self.slots)):
            async with self.locks[slot]:
                old = self.slots[slot]
                if self.stopping:
                    return
                if old is None or old.exited.is_set():
                    continue  # its keeper starts a new one anyway
                new = await self.launch(slot)
                if not new.ready:
                    log.error(
                        "worker %d: its replacement (pid %d) failed to start; the restart "
                        "stops there (%d of %d workers replaced), and pid %d serves on",
                        slot,
                        new.pid,
                        replaced,
                        len(self.slots),
                        old.pid,
                    )
                    return
                self.slots[slot] = new
            log.info("worker %d (pid %d) is serving", slot, new.pid)
            log.info("worker %d (pid %d) is finishing its exchanges", slot, old.pid)
            old.process.send_signal(signal.SIGHUP)
            self.nursery.start_soon(self._retire, old)
            replaced += 1
        if replaced == len(self.slots):
            log.info("every worker has been restarted")
        else:
            # The others were starting (or dying): their new workers run the new code.
            log.info(
                "%d of %d workers restarted; the others were starting", replaced, len(self.slots)
            )

    async def _retire(self, worker: _Worker) -> None:
        """Kill ``worker`` if it has not finished within the grace period (and a margin)."""
        with trio.move_on_after(self.grace + EXIT_MARGIN):
            await worker.exited.wait()
            status = worker.process.returncode
            log.info(
                "worker %d (pid %d) has finished (exit status %s)", worker.slot, worker.pid, status
            )
            return
        log.warning("worker %d (pid %d) did not finish in time; killed", worker.slot, worker.pid)
        worker.process.kill()

    async def stop(self) -> None:
        """Ask every worker to shut down gracefully; kill what is left after the grace."""
        self.stopping = True
        for process in list(self.processes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.grace + EXIT_MARGIN):
            for process in list(self.processes):
                await process.wait()
        for process in list(self.processes):
            if process.returncode is None:
                process.kill()


async def _wait_ready(process: trio.Process) -> bool:
    """True once the worker prints its serving line; False if it exits first (or is
    killed after ``START_TIMEOUT``)."""
    assert process.stdout is not None
    buffered = b""
    with trio.move_on_after(START_TIMEOUT):
        while b"serving on" not in buffered:
            data = await process.stdout.receive_some(4096)
            if not data:
                return False
            # Only the tail can hold the start of a line split across reads.
            buffered = buffered[-64:] + data
        return True
    process.kill()
    return False


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
    cert.pem``). SIGHUP restarts the workers one at a time, losing no connection.

    ``task_status.started`` receives the port once every worker is serving. Raises
    ``WorkersFailed`` if the port cannot be bound or workers keep exiting before they
    are ready.
    """
    sockets = _listening_sockets(host, port, workers, capabilities().reuse_port)
    supervisor = _Supervisor(spec, host, sockets, shutdown_grace, worker_arguments)
    try:
        await _supervise(supervisor, task_status)
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
        for sock in set(sockets):
            sock.close()


async def _supervise(supervisor: _Supervisor, task_status: Any) -> None:
    # Listening from the start: a signal while the workers start stops them as well,
    # rather than ending the supervisor and leaving them behind.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    with trio.open_signal_receiver(*stop_signals, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            supervisor.nursery = nursery
            # At most one restart waits while another runs: SIGHUPs meanwhile are one.
            restarts, requests = trio.open_memory_channel[None](1)
            readiness = [trio.Event() for _ in supervisor.slots]
            for slot, ready in enumerate(readiness):
                nursery.start_soon(supervisor.keep, slot, ready)
            nursery.start_soon(_announce, readiness, supervisor.port, task_status)
            nursery.start_soon(_restart_when_asked, supervisor, requests)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP, restarting the workers one at a time")
                    # Already pending, a restart replaces every worker anyway.
                    with suppress(trio.WouldBlock):
                        restarts.send_nowait(None)
                    continue
                log.info("received %s, stopping the workers", signal.Signals(signum).name)
                break
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    stopping.start_soon(_stop_now_on_second_signal, supervisor, signals)
                    await supervisor.stop()
                    stopping.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def _stop_now_on_second_signal(supervisor: _Supervisor, signals: AsyncIterator[int]) -> None:
    """A second SIGINT or SIGTERM while the workers finish their exchanges is passed on:
    a worker's second signal stops it at once (a second Ctrl-C cuts the grace short)."""
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.info("received %s again, stopping the workers now", signal.Signals(signum).name)
            for process in list(supervisor.processes):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            return


async def _restart_when_asked(
    supervisor: _Supervisor, requests: trio.MemoryReceiveChannel[None]
) -> None:
    async for _ in requests:
        await supervisor.restart()


async def _announce(readiness: list[trio.Event], port: int, task_status: Any) -> None:
    for ready in readiness:
        await ready.wait()
    task_status.started(port)
