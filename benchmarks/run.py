"""Run duplex's benchmarks against its peers, on this machine, in one go.

    python benchmarks/run.py [--quick] [--only small,echo,idle,broadcast,client,h2]
                             [--baseline REV]
                             [--output docs/benchmarks.md] [--json results.json]

Every server runs as its own process pinned to CPU 0 (``taskset -c 0``), every load
generator pinned to CPU 1, all traffic on 127.0.0.1. Servers are started fresh for each
benchmark and stopped by PID afterwards. Each load is bounded in count and in time.
The results are written as markdown tables (with the targets of issue 6 as ratios to
the peers measured in the same run) to ``--output``.

``--baseline REV`` also runs duplex as it was at the git revision REV (extracted with
``git archive`` into a temporary directory, imported with ``PYTHONPATH=<tree>/src``, removed
at the end) as one more row, ``duplex@<short rev>``, next to ``duplex`` in every table,
and adds a section of ``duplex / duplex@REV`` ratios to the report.

Nothing here passes or fails: a missing tool or a peer that breaks shows up as a note
in the tables, and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVERS = HERE / "servers"
CLIENTS = HERE / "clients"
PY = sys.executable
SERVER_CPU = "0"
LOAD_CPU = "1"
MIB = 1 << 20
GIB = 1 << 30
BENCHMARKS = ("small", "echo", "idle", "broadcast", "client", "h2")
SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class Sizes:
    wrk_seconds: int
    wrk_warmup: int
    echo_bytes: int
    idle_connections: int
    broadcast_counts: tuple[int, ...]
    broadcast_rounds: int
    client_seconds: float
    stream_bytes: int
    repeats: int
    #: Small requests and the echo swing most with the host's neighbours (the echo's
    #: runs fall into two modes for every server): more runs steady their medians.
    small_repeats: int
    echo_repeats: int


FULL = Sizes(
    wrk_seconds=10,
    wrk_warmup=2,
    echo_bytes=256 * MIB,
    idle_connections=10_000,
    broadcast_counts=(1_000, 10_000),
    broadcast_rounds=5,
    client_seconds=10.0,
    stream_bytes=256 * MIB,
    repeats=3,
    small_repeats=5,
    echo_repeats=7,
)
QUICK = Sizes(
    wrk_seconds=5,
    wrk_warmup=1,
    echo_bytes=64 * MIB,
    idle_connections=2_000,
    broadcast_counts=(1_000, 2_000),
    broadcast_rounds=3,
    client_seconds=3.0,
    stream_bytes=64 * MIB,
    repeats=1,
    small_repeats=1,
    echo_repeats=1,
)


# -- the servers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    description: str
    argv: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)


def _uvicorn(http: str, loop: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            PY, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(SERVERS),
            "--host", "127.0.0.1", "--port", str(port), "--http", http, "--loop", loop,
            "--no-access-log", "--log-level", "warning", "--backlog", "1024",
        ]  # fmt: skip

    return argv


def _granian(port: int) -> list[str]:
    return [
        PY, "-m", "granian", "--interface", "asgi", "--http", "2",
        "--workers", "1", "--runtime-threads", "1", "--no-ws",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--backlog", "1024", "asgi_app:app",
    ]  # fmt: skip


SERVER_SPECS = {
    spec.name: spec
    for spec in [
        Server(
            "duplex",
            "`duplex.serve` (benchmarks/servers/duplex_app.py), default limits but max_connections",
            lambda port: [PY, str(SERVERS / "duplex_app.py"), "--port", str(port)],
        ),
        Server(
            "duplex (1 MiB stream window)",
            "duplex_app.py with `Limits.stream_window_size` at 1 MiB rather than 65,535 "
            "(HTTP/2 echo only: what the window costs a stream)",
            lambda port: [
                PY,
                str(SERVERS / "duplex_app.py"),
                "--port",
                str(port),
                "--stream-window",
                str(1 << 20),
            ],
        ),
        Server(
            "trio-h11-floor",
            "trio.serve_tcp + one h11.Connection per socket (servers/trio_h11_floor.py)",
            lambda port: [PY, str(SERVERS / "trio_h11_floor.py"), "--port", str(port)],
        ),
        Server(
            "hypercorn-trio",
            "`hypercorn --worker-class trio --workers 0` + ASGI app (servers/asgi_app.py), "
            "no limit on the requests of an HTTP/2 connection (servers/hypercorn.toml)",
            lambda port: [
                PY,
                "-m",
                "hypercorn",
                "--worker-class",
                "trio",
                "--workers",
                "0",
                "--bind",
                f"127.0.0.1:{port}",
                "--backlog",
                "1024",
                "--config",
                str(SERVERS / "hypercorn.toml"),
                "asgi_app:app",
            ],
            {"PYTHONPATH": str(SERVERS)},
        ),
        Server(
            "uvicorn-h11",
            "`uvicorn --http h11 --loop asyncio` + the same ASGI app",
            _uvicorn("h11", "asyncio"),
        ),
        Server(
            "aiohttp",
            "aiohttp.web (asyncio) (servers/aiohttp_app.py)",
            lambda port: [PY, str(SERVERS / "aiohttp_app.py"), "--port", str(port)],
        ),
        Server(
            "uvicorn-httptools",
            "`uvicorn --http httptools --loop uvloop` + the same ASGI app (reference)",
            _uvicorn("httptools", "uvloop"),
        ),
        Server(
            "granian",
            "`granian --interface asgi --http 2 --workers 1 --runtime-threads 1` + the same "
            "ASGI app (HTTP/2 only; Rust, a reference; CPU counts its worker process too)",
            _granian,
            {"PYTHONPATH": str(SERVERS)},
        ),
        Server(
            "trio-raw-responder",
            "raw trio keep-alive responder, no HTTP parser (servers/trio_raw_responder.py): "
            "the small-request ceiling on trio",
            lambda port: [PY, str(SERVERS / "trio_raw_responder.py"), "--port", str(port)],
        ),
        Server(
            "trio-raw-echo",
            "raw trio TCP echo, no HTTP (servers/trio_raw_echo.py): the echo ceiling",
            lambda port: [PY, str(SERVERS / "trio_raw_echo.py"), "--port", str(port)],
        ),
    ]
}
HTTP_SERVERS = [
    "duplex",
    "trio-h11-floor",
    "hypercorn-trio",
    "uvicorn-h11",
    "aiohttp",
    "uvicorn-httptools",
]


# -- the baseline: duplex at another git revision -----------------------------------------


@dataclass(frozen=True)
class Baseline:
    """duplex at the git revision ``rev``, extracted (``git archive``) into ``tree``.

    Its processes get ``PYTHONPATH=<tree>/src``, so ``import duplex`` finds that tree's
    package before the one installed in the environment. Its duplex-specific scripts
    (benchmarks/servers/duplex_app.py, benchmarks/clients/http_clients.py) come from the
    tree when it has them, so the baseline runs as it was benchmarked at that revision;
    the generic load generators (wrk, echo_client.py, many_client.py) are this
    checkout's, the same for every row.
    """

    rev: str
    commit: str
    short: str
    subject: str
    tree: Path

    @property
    def name(self) -> str:
        return f"duplex@{self.short}"

    @property
    def env(self) -> dict[str, str]:
        paths = [str(self.tree / "src")]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return {"PYTHONPATH": os.pathsep.join(paths)}

    def script(self, relative: str) -> Path:
        own = self.tree / "benchmarks" / relative
        return own if own.exists() else HERE / relative

    def server(self) -> Server:
        script = self.script("servers/duplex_app.py")
        where = "the baseline's own" if script.is_relative_to(self.tree) else "this checkout's"
        return Server(
            self.name,
            f"`duplex.serve` at {self.short} ({self.subject}): {where} "
            f"benchmarks/servers/duplex_app.py with `PYTHONPATH=<git archive of {self.rev}>/src`",
            lambda port: [PY, str(script), "--port", str(port)],
            self.env,
        )

    def info(self) -> dict[str, str]:
        return {
            "rev": self.rev,
            "commit": self.commit,
            "short": self.short,
            "name": self.name,
            "subject": self.subject,
        }


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[Baseline]:
    """Extract ``rev`` into a temporary directory (outside the repository, leaving no
    worktree behind), check that its ``duplex`` is the one imported, and remove it on
    the way out."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        raise RuntimeError(f"{rev!r} is not a commit of {REPO}") from None
    short = _git("rev-parse", "--short", commit)
    subject = _git("log", "-1", "--format=%s", commit)
    tree = Path(tempfile.mkdtemp(prefix=f"duplex-baseline-{short}-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", commit],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {commit}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            # Our own repository's archive; the "data" filter where Python has it (3.11.4+).
            tar.extraction_filter = getattr(tarfile, "data_filter", None)
            tar.extractall(tree)
        baseline = Baseline(rev, commit, short, subject[:80], tree)
        found = subprocess.run(
            [PY, "-c", "import duplex; print(duplex.__file__)"],
            capture_output=True,
            text=True,
            env={**os.environ, **baseline.env},
            cwd=REPO,
            check=False,
        )
        imported = Path(found.stdout.strip() or "?").resolve()
        if found.returncode != 0 or not imported.is_relative_to(tree.resolve()):
            raise RuntimeError(
                f"the baseline tree's duplex is not the one imported ({imported}): "
                f"{found.stderr.strip()[-300:]}"
            )
        yield baseline
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def lineup(names: list[str], baseline: str | None) -> list[str]:
    """``names`` with the baseline's row right after ``duplex``."""
    if baseline is None or "duplex" not in names:
        return list(names)
    at = names.index("duplex") + 1
    return [*names[:at], baseline, *names[at:]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server that runs its work in child processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class RunningServer:
    """A server process we started (pinned to SERVER_CPU); stopped by its PID."""

    def __init__(self, spec: Server, logdir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = logdir / f"{spec.name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, **self.spec.env}
        with self.log_path.open("wb") as log:
            # taskset execs the server, so the PID is the server's own.
            self.proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, *self.spec.argv(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} did not listen within {timeout}s")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-400:]
        return ""

    def cpu_seconds(self) -> float:
        """CPU time of the server process and of any child processes it runs."""
        total = 0.0
        for pid in proc_tree(self.pid):
            with contextlib.suppress(OSError, ValueError):
                total += proc_cpu_seconds(pid)
        return total

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def running(name: str, logdir: Path, baseline: Baseline | None = None) -> Iterator[RunningServer]:
    spec = baseline.server() if baseline and name == baseline.name else SERVER_SPECS[name]
    server = RunningServer(spec, logdir)
    try:
        server.start()
        time.sleep(0.3)
        yield server
    finally:
        server.stop()


# -- load generators --------------------------------------------------------------------


def pinned(argv: list[str]) -> list[str]:
    return ["taskset", "-c", LOAD_CPU, *argv]


def run_json(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a load generator (pinned to LOAD_CPU) that prints a JSON line; parse it.
    ``env`` is added to this process's environment."""
    done = subprocess.run(
        pinned(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{Path(argv[1]).name} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    requests = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    if requests is None or rps is None or p99 is None or p50 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(requests[1]),
        "rps": float(rps[1]),
        "p50_ms": _ms(p50[1]),
        "p99_ms": _ms(p99[1]),
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx[1]) if non2xx else 0,
    }


def wrk(url: str, seconds: int) -> dict[str, Any]:
    argv = pinned(["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", url])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# -- the benchmarks ---------------------------------------------------------------------


def _medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """One result from repeated runs: each of ``keys`` is the median of its runs (the
    rest comes from the run with the median first key); ``runs`` keeps the first key's
    values, for the spread."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[-1] if runs else {"error": "not run"}
    first = keys[0]
    good.sort(key=lambda run: run[first])
    chosen = dict(good[(len(good) - 1) // 2])
    for key in keys:
        values = [run[key] for run in good if run.get(key) is not None]
        if values:
            chosen[key] = statistics.median(values)
    chosen["runs"] = [run[first] for run in good]
    return chosen


Log = Callable[[str], None]


#: Small requests run against the HTTP servers and the trio ceiling.
SMALL_SERVERS = [*HTTP_SERVERS, "trio-raw-responder"]


def bench_small(sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"_skipped": "wrk is not installed (apt-get install -y wrk)"}
    servers = lineup(SMALL_SERVERS, baseline.name if baseline else None)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    # Repeats go round all the servers, so that a noisy minute hits each of them alike.
    for repeat in range(sizes.small_repeats):
        for name in servers:
            try:
                with running(name, logdir, baseline) as server:
                    wrk(server.url + "/", sizes.wrk_warmup)
                    cpu0 = server.cpu_seconds()
                    result = wrk(server.url + "/", sizes.wrk_seconds)
                    cpu = server.cpu_seconds() - cpu0
                result["server_cpu_s"] = cpu
                result["req_per_cpu_s"] = result["requests"] / cpu if cpu else math.nan
                runs[name].append(result)
                log(
                    f"small {name} #{repeat + 1}: {result['rps']:.0f} req/s, "
                    f"p99 {result['p99_ms']:.2f} ms, {result['req_per_cpu_s']:.0f} req/CPU-s"
                )
            except Exception as error:
                runs[name].append({"error": str(error)})
                log(f"small {name}: ERROR {error}")
    keys = ("req_per_cpu_s", "rps", "p99_ms", "server_cpu_s")
    return {name: _medians(found, keys) for name, found in runs.items()}


ECHO_SERVERS = [*HTTP_SERVERS, "trio-raw-echo"]


def bench_echo(sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None) -> dict[str, Any]:
    servers = lineup(ECHO_SERVERS, baseline.name if baseline else None)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    client = str(CLIENTS / "echo_client.py")
    for repeat in range(sizes.echo_repeats):
        for name in servers:
            mode = "raw" if name == "trio-raw-echo" else "http"
            base = [PY, client, "--mode", mode, "--timeout", "120", "--stall", "10"]
            try:
                with running(name, logdir, baseline) as server:
                    port = ["--port", str(server.port)]
                    run_json([*base, *port, "--total", str(4 * MIB)], timeout=60)  # warm-up
                    cpu0 = server.cpu_seconds()
                    total = ["--total", str(sizes.echo_bytes)]
                    result = run_json([*base, *port, *total], timeout=180)
                    cpu = server.cpu_seconds() - cpu0
                echoed = result["echoed"]
                result["server_cpu_s"] = cpu
                result["cpu_s_per_gib"] = cpu / (echoed / GIB) if echoed else math.nan
                runs[name].append(result)
                log(
                    f"echo {name} #{repeat + 1}: {result['outcome']}, "
                    f"{result['mib_per_s']:.1f} MiB/s, {result['cpu_s_per_gib']:.2f} CPU-s/GiB, "
                    f"first byte {(result['first_byte_seconds'] or math.nan) * 1000:.1f} ms "
                    f"after {(result['sent_at_first_echo'] or 0) / MIB:.1f} MiB sent"
                )
            except Exception as error:
                runs[name].append({"error": str(error)})
                log(f"echo {name}: ERROR {error}")
    keys = ("mib_per_s", "cpu_s_per_gib", "first_byte_seconds")
    return {name: _medians(found, keys) for name, found in runs.items()}


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    if not readable:
        raise TimeoutError(f"no answer within {timeout}s")
    return proc.stdout.readline()


def bench_idle(sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    count = sizes.idle_connections
    client = [PY, str(CLIENTS / "many_client.py"), "idle", "--path", "/idle"]
    for name in lineup(HTTP_SERVERS, baseline.name if baseline else None):
        try:
            with running(name, logdir, baseline) as server:
                port = ["--port", str(server.port)]
                # Warm-up: the streaming code paths run (and import) once before "before".
                run_json([*client, *port, "--count", "50", "--hold", "0"], timeout=60)
                time.sleep(1.0)
                rss0, cpu0 = server.rss_kib(), server.cpu_seconds()
                proc = subprocess.Popen(
                    pinned([*client, *port, "--count", str(count), "--hold", "300"]),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=REPO,
                )
                try:
                    line = _read_line(proc, timeout=240)
                    if not line.startswith("{"):
                        assert proc.stderr is not None
                        raise RuntimeError(f"idle client failed: {proc.stderr.read()[-500:]}")
                    opened = json.loads(line)
                    time.sleep(1.0)  # settle
                    rss1, cpu1 = server.rss_kib(), server.cpu_seconds()
                finally:
                    if proc.poll() is None:
                        assert proc.stdin is not None
                        with contextlib.suppress(OSError):
                            proc.stdin.write("\n")
                            proc.stdin.close()
                        try:
                            proc.wait(timeout=60)
                        except subprocess.TimeoutExpired:
                            os.kill(proc.pid, signal.SIGKILL)
                            proc.wait()
            result = {
                "connections": opened["opened"],
                "open_seconds": opened["seconds"],
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "kib_per_connection": (rss1 - rss0) / opened["opened"],
                "cpu_s_to_open": cpu1 - cpu0,
            }
            results[name] = result
            log(
                f"idle {name}: {result['kib_per_connection']:.1f} KiB/conn, "
                f"opened {count} in {result['open_seconds']:.2f} s"
            )
        except Exception as error:
            results[name] = {"error": str(error)}
            log(f"idle {name}: ERROR {error}")
    return results


def _broadcast(
    name: str, sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None
) -> dict[str, Any]:
    counts = ",".join(str(n) for n in sizes.broadcast_counts)
    try:
        with running(name, logdir, baseline) as server:
            argv = [
                PY, str(CLIENTS / "many_client.py"), "broadcast", "--port", str(server.port),
                "--path", "/sse", "--counts", counts, "--rounds", str(sizes.broadcast_rounds),
                "--server-pid", str(server.pid),
            ]  # fmt: skip
            result = run_json(argv, timeout=600)
            result["rss_kib"] = server.rss_kib()
    except Exception as error:
        log(f"broadcast {name}: ERROR {error}")
        return {"error": str(error)}
    for row in result["results"]:
        log(
            f"broadcast {name} to {row['subscribers']}: median {row['median_last_ms']:.1f} ms "
            f"(best {row['best_last_ms']:.1f}, worst {row['worst_last_ms']:.1f})"
        )
    return result


def bench_broadcast(
    sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None
) -> dict[str, Any]:
    """duplex's result; with a baseline, the baseline's result under ``"baseline"``."""
    result = _broadcast("duplex", sizes, logdir, log, baseline)
    if baseline is not None:
        time.sleep(SETTLE_SECONDS)
        result["baseline"] = _broadcast(baseline.name, sizes, logdir, log, baseline)
    return result


CLIENT_LIBS = ("duplex", "httpx", "aiohttp")
#: duplex's client streaming a ``Writable`` body another task writes.
WRITABLE_ROW = "duplex (Writable body)"
GET_SERVER = "uvicorn-httptools"


def _run_into(
    runs: list[dict[str, Any]],
    argv: list[str],
    timeout: float,
    env: dict[str, str] | None,
    check: Callable[[dict[str, Any]], str],
    log: Log,
    label: str,
    run: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Run one load generator (``argv`` printing JSON, or ``run``) and add its result
    to ``runs``: ``check`` completes it and says it in a few words (or raises); a
    failure is added and logged instead."""
    try:
        result = run() if run is not None else run_json(argv, timeout=timeout, env=env)
        said = check(result)
    except Exception as error:
        runs.append({"error": str(error)})
        log(f"{label}: ERROR {error}")
        return
    runs.append(result)
    log(f"{label}: {said}")


def _get_rates(result: dict[str, Any]) -> str:
    result["rps"] = result["requests"] / result["seconds"]
    result["req_per_cpu_s"] = result["requests"] / result["cpu_seconds"]
    return f"{result['rps']:.0f} req/s, {result['req_per_cpu_s']:.0f} req/client-CPU-s"


def _stream_rate_h2load(result: dict[str, Any]) -> str:
    return f"{result['mib_per_s']:.1f} MiB/s, {result['cpu_s_per_gib']:.2f} CPU-s/GiB"


def _stream_rate(result: dict[str, Any]) -> str:
    if result["outcome"] != "ok":
        raise RuntimeError(f"outcome {result['outcome']}")
    return f"{result['mib_per_s']:.1f} MiB/s"


def bench_client(sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None) -> dict[str, Any]:
    """The baseline's client (the library at that revision, run by that revision's
    clients/http_clients.py) talks to the same servers as the others: uvicorn-httptools
    for GET, this checkout's duplex server for streaming."""
    results: dict[str, Any] = {"get": {}, "stream": {}, "get_server": GET_SERVER}
    libs = lineup(list(CLIENT_LIBS), baseline.name if baseline else None)

    def client(lib: str) -> tuple[list[str], dict[str, str] | None]:
        """The command's start for ``lib`` and the environment it adds."""
        if baseline is not None and lib == baseline.name:
            script = str(baseline.script("clients/http_clients.py"))
            return [PY, script], baseline.env
        return [PY, str(CLIENTS / "http_clients.py")], None

    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        with running(GET_SERVER, logdir) as server:
            for repeat in range(sizes.repeats):
                for concurrency in (1, 10):
                    for lib in libs:
                        key = f"{lib}/c{concurrency}"
                        start, env = client(lib)
                        argv = [
                            *start, "get", "--lib", lib.split("@")[0], "--url", server.url + "/",
                            "--concurrency", str(concurrency),
                            "--duration", str(sizes.client_seconds),
                            "--max-requests", "2000000",
                        ]  # fmt: skip
                        _run_into(
                            runs[key], argv, sizes.client_seconds + 60, env, _get_rates, log,
                            f"client get {key} #{repeat + 1}",
                        )  # fmt: skip
    except Exception as error:
        results["get"]["_error"] = str(error)
    for key, found in runs.items():
        results["get"][key] = _medians(found, ("rps", "req_per_cpu_s", "requests"))
    streams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # Each client gets the upload as the same async generator; duplex's client also
    # with a ``Writable`` another task writes (informative: its ``Stream`` way).
    lineup_stream = [(lib, "iterator") for lib in libs] + [(WRITABLE_ROW, "writable")]
    try:
        with running("duplex", logdir) as server:
            for repeat in range(sizes.repeats):
                for route in ("echo", "updown"):
                    for lib, upload in lineup_stream:
                        if upload == "writable" and route != "echo":
                            continue
                        key = f"{lib}/{route}"
                        name = lib.split("@")[0]
                        start, env = client(lib)
                        argv = [
                            *start, "stream", "--lib", "duplex" if upload == "writable" else name,
                            "--url", server.url, "--route", route,
                            "--total", str(sizes.stream_bytes), "--timeout", "120", "--stall", "5",
                            *(["--upload", upload] if upload == "writable" else []),
                        ]  # fmt: skip
                        _run_into(
                            streams[key], argv, 180, env, _stream_rate, log,
                            f"client stream {key} #{repeat + 1}",
                        )  # fmt: skip
    except Exception as error:
        results["stream"]["_error"] = str(error)
    for key, found in streams.items():
        results["stream"][key] = _medians(found, ("mib_per_s", "client_cpu_seconds"))
    return results


H2_SERVERS = ["duplex", "hypercorn-trio", "granian"]
#: The HTTP/1.1 echo row measured in the same rounds, for the h2/HTTP/1.1 ratio.
H1_ECHO_ROW = "duplex (HTTP/1.1)"
#: duplex with a wider stream window: an HTTP/2 echo row only (informative).
WIDE_WINDOW_ROW = "duplex (1 MiB stream window)"
H2_ECHO_ROWS = [*H2_SERVERS, WIDE_WINDOW_ROW, H1_ECHO_ROW]


def parse_h2load(output: str) -> dict[str, Any]:
    finished = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    if finished is None or counts is None:
        raise RuntimeError(f"cannot read h2load's output:\n{output[-800:]}")
    # (h2load's "errored" requests are counted among its "failed" ones too.)
    return {
        "requests": int(counts[3]),
        "rps": float(finished[3]),
        "errors": int(counts[4]) + int(counts[6]),
    }


def h2load(url: str, requests: int, timeout: float) -> dict[str, Any]:
    """``requests`` requests over 10 connections of 10 streams each. A count rather than
    a duration (``-D``): hypercorn's trio worker crashes when h2load cuts its
    connections with streams in flight at the end of a timed run."""
    argv = pinned(["h2load", "-c10", "-m10", f"-n{requests}", url])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {(done.stderr or done.stdout).strip()[-300:]}")
    result = parse_h2load(done.stdout)
    if not result["requests"]:
        raise RuntimeError(f"h2load: no request succeeded: {done.stdout.strip()[-300:]}")
    return result


def h2_small(server: RunningServer, sizes: Sizes) -> dict[str, Any]:
    """Small requests over h2c: a warm-up of 2,000 requests gives the rate, from which
    the measured run's count is sized to last about ``sizes.wrk_seconds``."""
    url = server.url + "/"
    warm = h2load(url, 2000, timeout=60)
    count = min(max(int(warm["rps"] * sizes.wrk_seconds), 2000), 3_000_000)
    cpu0 = server.cpu_seconds()
    result = h2load(url, count, timeout=sizes.wrk_seconds * 6 + 60)
    cpu = server.cpu_seconds() - cpu0
    result["server_cpu_s"] = cpu
    result["req_per_cpu_s"] = result["requests"] / cpu if cpu else math.nan
    return result


def h2_echo(server: RunningServer, sizes: Sizes, mode: str) -> dict[str, Any]:
    """The streaming echo over one connection (``mode``: ``h2`` or ``http``); a run that
    broke before it sent anything is tried once more (a peer that resets a fresh
    connection now and then)."""
    client = str(CLIENTS / "echo_client.py")
    base = [PY, client, "--mode", mode, "--timeout", "120", "--stall", "10"]
    port = ["--port", str(server.port)]
    run_json([*base, *port, "--total", str(4 * MIB)], timeout=60)  # warm-up
    for attempt in range(2):
        cpu0 = server.cpu_seconds()
        result = run_json([*base, *port, "--total", str(sizes.echo_bytes)], 180)
        cpu = server.cpu_seconds() - cpu0
        if result["outcome"] == "ok" or result["sent"] or attempt:
            break
    echoed = result["echoed"]
    result["server_cpu_s"] = cpu
    result["cpu_s_per_gib"] = cpu / (echoed / GIB) if echoed else math.nan
    return result


def h2load_echo(server: RunningServer, upload: Path) -> dict[str, Any]:
    """The streaming echo with h2load as the client (C: its own cost is small): the file
    ``upload`` as one request's body, the response read as it comes (h2load opens its
    own receive window wide). MiB/s = echoed MiB / h2load's time."""
    argv = pinned(["h2load", "-n1", "-c1", "-d", str(upload), server.url + "/echo"])
    cpu0 = server.cpu_seconds()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    cpu = server.cpu_seconds() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed: {(done.stderr or done.stdout).strip()[-300:]}")
    result = parse_h2load(done.stdout)
    finished = re.search(r"finished in ([\d.]+)(m?s),", done.stdout)
    echoed = re.search(r"\((\d+)\) data", done.stdout)
    if not result["requests"] or finished is None or echoed is None:
        raise RuntimeError(f"h2load: the echo failed: {done.stdout.strip()[-300:]}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    size = int(echoed[1])
    if size != upload.stat().st_size:
        raise RuntimeError(f"h2load: {size:,} bytes echoed of {upload.stat().st_size:,}")
    return {
        "mib_per_s": size / MIB / seconds,
        "seconds": seconds,
        "server_cpu_s": cpu,
        "cpu_s_per_gib": cpu / (size / GIB),
    }


def bench_h2(sizes: Sizes, logdir: Path, log: Log, baseline: Baseline | None) -> dict[str, Any]:
    """HTTP/2 with prior knowledge (h2c): small requests by h2load, the streaming echo by
    echo_client.py's h2 mode; duplex's HTTP/1.1 echo in the same rounds for the ratio."""
    results: dict[str, Any] = {"small": {}, "echo": {}}
    if shutil.which("h2load") is None:
        results["small"]["_skipped"] = "h2load is not installed (apt-get install nghttp2-client)"
    small: dict[str, list[dict[str, Any]]] = {name: [] for name in H2_SERVERS}
    echo: dict[str, list[dict[str, Any]]] = {name: [] for name in H2_ECHO_ROWS}
    by_h2load: dict[str, list[dict[str, Any]]] = defaultdict(list)
    upload = logdir / "h2load-upload.bin"
    with upload.open("wb") as file:
        file.truncate(sizes.echo_bytes)  # (zeros: h2load sends the file as it is)
    for repeat in range(sizes.repeats):
        for name in H2_ECHO_ROWS:
            h1 = name == H1_ECHO_ROW
            try:
                with running("duplex" if h1 else name, logdir) as server:
                    if name in small and "_skipped" not in results["small"]:
                        try:
                            result = h2_small(server, sizes)
                            small[name].append(result)
                            log(
                                f"h2 small {name} #{repeat + 1}: {result['rps']:.0f} req/s, "
                                f"{result['req_per_cpu_s']:.0f} req/CPU-s, "
                                f"{result['errors']} errors"
                            )
                        except Exception as error:
                            small[name].append({"error": str(error)})
                            log(f"h2 small {name}: ERROR {error}")
                    if not h1 and "_skipped" not in results["small"]:
                        _run_into(
                            by_h2load[name], [], 0, None, _stream_rate_h2load, log,
                            f"h2 echo by h2load {name} #{repeat + 1}",
                            run=lambda: h2load_echo(server, upload),
                        )  # fmt: skip
                    result = h2_echo(server, sizes, "http" if h1 else "h2")
                    echo[name].append(result)
                    log(
                        f"h2 echo {name} #{repeat + 1}: {result['outcome']}, "
                        f"{result['mib_per_s']:.1f} MiB/s, "
                        f"{result['cpu_s_per_gib']:.2f} CPU-s/GiB"
                        + (f" ({result['detail']})" if "detail" in result else "")
                    )
            except Exception as error:
                echo[name].append({"error": str(error)})
                log(f"h2 {name}: ERROR {error}")
    for name, found in small.items():
        if found:
            results["small"][name] = _medians(found, ("req_per_cpu_s", "rps", "server_cpu_s"))
    for name, found in echo.items():
        results["echo"][name] = _medians(found, ("mib_per_s", "cpu_s_per_gib"))
    results["echo_h2load"] = {
        name: _medians(found, ("mib_per_s", "cpu_s_per_gib")) for name, found in by_h2load.items()
    }
    upload.unlink(missing_ok=True)
    return results


RUNNERS = {
    "small": bench_small,
    "echo": bench_echo,
    "idle": bench_idle,
    "broadcast": bench_broadcast,
    "client": bench_client,
    "h2": bench_h2,
}


# -- the report -------------------------------------------------------------------------


def environment(command: str) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    versions = {}
    for package in (
        "duplex", "trio", "h11", "hypercorn", "uvicorn", "httptools", "uvloop",
        "aiohttp", "httpx", "httpcore", "anyio",
    ):  # fmt: skip
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    wrk_version = "not installed"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk_version = (out.stdout + out.stderr).split("[")[0].strip() or "unknown"
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (commit or "unknown") + (" (src/ has uncommitted changes)" if dirty else ""),
        "nproc": nproc,
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "wrk": wrk_version,
        "command": command,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row + [""] * (len(header) - len(row))) + " |" for row in rows]
    return lines


def _ratio(a: Any, b: Any) -> float:
    try:
        return float(a) / float(b)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan


def _get(results: dict[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def targets(results: dict[str, Any]) -> list[list[str]]:
    """Rows of (target, goal, measured, met?) from the results of this run."""
    rows: list[list[str]] = []

    def at_least(what: str, goal: float, measured: float, detail: str) -> None:
        if math.isnan(measured):
            rows.append([what, f"≥ {goal:g}x", "not measured", "—"])
            return
        met = "yes" if measured >= goal else "**no**"
        rows.append([what, f"≥ {goal:g}x", f"{measured:.2f}x ({detail})", met])

    def at_most(what: str, goal: float, measured: float, detail: str, unit: str = "x") -> None:
        if math.isnan(measured):
            rows.append([what, f"≤ {goal:g}{unit}", "not measured", "—"])
            return
        met = "yes" if measured <= goal else "**no**"
        rows.append([what, f"≤ {goal:g}{unit}", f"{measured:.2f}{unit} ({detail})", met])

    small = results.get("small", {})
    d = _get(small, "duplex", "req_per_cpu_s")
    for peer, goal in (
        ("trio-h11-floor", 1.0),
        ("hypercorn-trio", 4.0),
        ("aiohttp", 1.0),
        ("trio-raw-responder", 0.5),
    ):
        p = _get(small, peer, "req_per_cpu_s")
        at_least(
            f"small: req per server CPU-s vs {peer}",
            goal,
            _ratio(d, p),
            f"{_fmt(d, 0)} / {_fmt(p, 0)}",
        )
    echo = results.get("echo", {})
    d = _get(echo, "duplex", "mib_per_s")
    # (Issue 6's two goals, then issue 16's: no regression, 0.9x the raw trio echo.)
    for peer, goal in (("trio-h11-floor", 1.4), ("trio-raw-echo", 0.6), ("trio-raw-echo", 0.9)):
        p = _get(echo, peer, "mib_per_s")
        at_least(f"echo: MiB/s vs {peer}", goal, _ratio(d, p), f"{_fmt(d)} / {_fmt(p)} MiB/s")
    d_cpu = _get(echo, "duplex", "cpu_s_per_gib")
    for peer, goal in (("trio-h11-floor", 1.4), ("trio-raw-echo", 0.6)):
        p_cpu = _get(echo, peer, "cpu_s_per_gib")
        at_least(
            f"echo (CPU view, informative): GiB per server CPU-s vs {peer}",
            goal,
            _ratio(p_cpu, d_cpu),
            f"{_fmt(d_cpu, 2)} / {_fmt(p_cpu, 2)} CPU-s per GiB",
        )
    idle = results.get("idle", {})
    d = _get(idle, "duplex", "kib_per_connection")
    for peer, goal in (("trio-h11-floor", 1.0), ("uvicorn-h11", 0.7)):
        p = _get(idle, peer, "kib_per_connection")
        at_most(
            f"idle: memory per connection vs {peer}",
            goal,
            _ratio(d, p),
            f"{_fmt(d)} / {_fmt(p)} KiB",
        )
    measured = {row["subscribers"]: row for row in _get(results, "broadcast", "results") or []}
    # (Issue 6's two goals, then issue 16's: 10,000 within 75 ms.)
    for subscribers, goal in ((1_000, 15.0), (10_000, 150.0), (10_000, 75.0)):
        row = measured.get(subscribers)
        at_most(
            f"broadcast to {subscribers:,} (median of rounds)",
            goal,
            math.nan if row is None else row["median_last_ms"],
            "" if row is None else f"best {row['best_last_ms']:.1f} ms",
            " ms",
        )
    client = results.get("client", {})
    for concurrency in (1, 10):
        d = _get(client, "get", f"duplex/c{concurrency}", "rps")
        h = _get(client, "get", f"httpx/c{concurrency}", "rps")
        at_least(
            f"client: GET req/s vs httpx, {concurrency} task(s)",
            1.5,
            _ratio(d, h),
            f"{_fmt(d, 0)} / {_fmt(h, 0)}",
        )
        d = _get(client, "get", f"duplex/c{concurrency}", "req_per_cpu_s")
        h = _get(client, "get", f"httpx/c{concurrency}", "req_per_cpu_s")
        at_least(
            f"client (CPU view, informative): GET per client CPU-s vs httpx, {concurrency} task(s)",
            1.5,
            _ratio(d, h),
            f"{_fmt(d, 0)} / {_fmt(h, 0)}",
        )
        a = _get(client, "get", f"aiohttp/c{concurrency}", "req_per_cpu_s")
        at_least(
            f"client: GET per client CPU-s vs aiohttp, {concurrency} task(s)",
            1.0,
            _ratio(d, a),
            f"{_fmt(d, 0)} / {_fmt(a, 0)}",
        )
    h2 = results.get("h2", {})
    d = _get(h2, "small", "duplex", "req_per_cpu_s")
    p = _get(h2, "small", "hypercorn-trio", "req_per_cpu_s")
    at_least(
        "h2: small req per server CPU-s vs hypercorn-trio (h2c)",
        3.0,
        _ratio(d, p),
        f"{_fmt(d, 0)} / {_fmt(p, 0)}",
    )
    d = _get(h2, "echo", "duplex", "mib_per_s")
    p = _get(h2, "echo", H1_ECHO_ROW, "mib_per_s")
    at_least(
        "h2: echo MiB/s vs duplex's own HTTP/1.1 echo",
        0.7,
        _ratio(d, p),
        f"{_fmt(d)} / {_fmt(p)} MiB/s",
    )
    stream = client.get("stream", {})
    d = _get(stream, "duplex/echo", "mib_per_s")
    a = _get(stream, "aiohttp/echo", "mib_per_s")
    at_least(
        "client: streaming full-duplex echo MiB/s vs aiohttp",
        0.8,
        _ratio(d, a),
        f"{_fmt(d)} / {_fmt(a)} MiB/s",
    )
    h = _get(stream, "httpx/updown", "mib_per_s")
    for route, label in (("echo", "full duplex"), ("updown", "upload then download")):
        d = _get(stream, f"duplex/{route}", "mib_per_s")
        at_least(
            f"client: streaming MiB/s, duplex {label} vs httpx upload then download",
            1.0,
            _ratio(d, h),
            f"{_fmt(d)} / {_fmt(h)} MiB/s",
        )
    return rows


def _spread(result: dict[str, Any], digits: int) -> str:
    runs = result.get("runs") or []
    if len(runs) < 2:
        return "—"
    return f"{_fmt(float(min(runs)), digits)} to {_fmt(float(max(runs)), digits)}"


def _cell_error(result: dict[str, Any]) -> list[str] | None:
    if "error" in result:
        return [_error_text(result["error"])]
    return None


def _error_text(error: str) -> str:
    """An error for a table cell: on one line, without the table's separator."""
    return "error: " + " ".join(error.split())[:120].replace("|", "/")


def _rewrap(lines: list[str], width: int = 88) -> list[str]:
    """Re-flow plain paragraphs to ``width``; join list items onto one line each."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        first = block[0]
        if first.startswith(("|", "#")):
            out.extend(block)
        elif first.startswith("- "):
            items: list[str] = []
            for line in block:
                if line.startswith("- ") or not items:
                    items.append(line)
                else:
                    items[-1] += " " + line.strip()
            out.extend(items)
        else:
            out.extend(textwrap.wrap(" ".join(line.strip() for line in block), width))
        block.clear()

    for line in lines:
        if line:
            block.append(line)
        else:
            flush()
            out.append("")
    flush()
    return out


def against_baseline(results: dict[str, Any], name: str) -> list[list[str]]:
    """Rows of (figure, better when, duplex, baseline, duplex / baseline, spread) for
    every figure either row has. A worse figure is "within run spread" when the ranges
    of the two rows' repeated runs overlap."""
    rows: list[list[str]] = []

    def row(
        what: str,
        higher: bool,
        d: Any,
        b: Any,
        digits: int = 1,
        runs: tuple[Any, Any] | None = None,
    ) -> None:
        if d is None and b is None:
            return
        ratio = _ratio(d, b)
        if math.isnan(ratio):
            verdict = "—"
        elif (ratio >= 1.0) if higher else (ratio <= 1.0):
            verdict = "better or equal"
        else:
            d_runs, b_runs = (runs[0] or [], runs[1] or []) if runs else ([], [])
            if len(d_runs) < 2 or len(b_runs) < 2:
                verdict = "worse (no spread to compare)"
            elif (max(d_runs) >= min(b_runs)) if higher else (min(d_runs) <= max(b_runs)):
                verdict = "within run spread"
            else:
                verdict = "**worse, outside run spread**"
        rows.append(
            [
                what,
                "higher" if higher else "lower",
                _fmt(d, digits),
                _fmt(b, digits),
                _fmt(ratio, 3),
                verdict,
            ]
        )

    def runs(section: dict[str, Any], server: str) -> Any:
        return _get(section, server, "runs")

    small = results.get("small")
    if small and "_skipped" not in small:
        for key, label, higher, digits in (
            ("req_per_cpu_s", "small: req per server CPU-s", True, 0),
            ("rps", "small: req/s", True, 0),
            ("p99_ms", "small: p99 ms", False, 2),
        ):
            spread = (runs(small, "duplex"), runs(small, name)) if key == "req_per_cpu_s" else None
            row(label, higher, _get(small, "duplex", key), _get(small, name, key), digits, spread)
    echo = results.get("echo")
    if echo:
        row(
            "echo: MiB/s",
            True,
            _get(echo, "duplex", "mib_per_s"),
            _get(echo, name, "mib_per_s"),
            1,
            (runs(echo, "duplex"), runs(echo, name)),
        )
        d, b = _get(echo, "duplex", "cpu_s_per_gib"), _get(echo, name, "cpu_s_per_gib")
        row("echo: server CPU-s per GiB", False, d, b, 2)
    idle = results.get("idle")
    if idle:
        d, b = _get(idle, "duplex", "kib_per_connection"), _get(idle, name, "kib_per_connection")
        row("idle: KiB per connection", False, d, b)
        d, b = _get(idle, "duplex", "cpu_s_to_open"), _get(idle, name, "cpu_s_to_open")
        row("idle: server CPU-s to open all", False, d, b, 2)
    broadcast = results.get("broadcast")
    if broadcast:
        ours = {r["subscribers"]: r for r in broadcast.get("results", [])}
        theirs = {r["subscribers"]: r for r in _get(broadcast, "baseline", "results") or []}
        for subscribers in sorted(set(ours) | set(theirs)):
            d, b = ours.get(subscribers, {}), theirs.get(subscribers, {})
            for key, label in (
                ("median_last_ms", "last has it, ms (median)"),
                ("mean_server_cpu_ms", "server CPU ms per broadcast"),
            ):
                what = f"broadcast to {subscribers:,}: {label}"
                row(what, False, d.get(key), b.get(key))
    client = results.get("client")
    if client:
        for concurrency in (1, 10):
            for key, label in (("rps", "req/s"), ("req_per_cpu_s", "req per client CPU-s")):
                d = _get(client, "get", f"duplex/c{concurrency}", key)
                b = _get(client, "get", f"{name}/c{concurrency}", key)
                row(f"client: GET {label}, {concurrency} task(s)", True, d, b, 0)
        for route in ("echo", "updown"):
            d = _get(client, "stream", f"duplex/{route}", "mib_per_s")
            b = _get(client, "stream", f"{name}/{route}", "mib_per_s")
            row(f"client: streaming /{route} MiB/s", True, d, b)
    return rows


def _broadcast_rows(result: dict[str, Any]) -> list[list[str]]:
    return [
        [
            _fmt(row["subscribers"]),
            _fmt(row["median_last_ms"], 1),
            _fmt(row["best_last_ms"], 1),
            _fmt(row["worst_last_ms"], 1),
            _fmt(row["median_first_ms"], 1),
            _fmt(row["mean_server_cpu_ms"], 1),
            _fmt(row["mean_server_cpu_ms"] * 1000 / row["subscribers"], 1),
            _fmt(row["missed"]),
            _fmt(row["open_seconds"], 2),
        ]
        for row in result["results"]
    ]


def render(env: dict[str, Any], results: dict[str, Any], sizes: Sizes, quick: bool) -> str:
    baseline: dict[str, str] | None = env.get("baseline")
    bname = baseline["name"] if baseline else None
    out: list[str] = ["# Benchmarks", ""]
    out += [
        "duplex measured against its peers in one run on one machine (issue 6). These are",
        "numbers from one noisy host, never a pass/fail test; CI does not run them. How to run",
        "them and what each measures: [benchmarks/README.md](../benchmarks/README.md).",
        "",
    ]
    if quick:
        out += ["**Quick run (development sizes): not representative.**", ""]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    out += [
        f"- Date: {env['date']}",
        f"- Machine: `nproc` = {env['nproc']}, CPU: {env['cpu_model']}, Linux {env['kernel']}",
        f"- Python: {env['python']}; {versions}; {env['wrk']}",
        f"- Command: `{env['command']}`, at commit {env['commit']}",
        *(
            [
                f"- Baseline: **{bname}** = duplex at `{baseline['rev']}` ({baseline['commit']}, "
                f'"{baseline["subject"]}"), run from a `git archive` of that revision with '
                "`PYTHONPATH=<tree>/src`"
            ]
            if baseline
            else []
        ),
        f"- Load average (1/5/15 min) at start: {' / '.join(env['loadavg_start'])}, at end: "
        f"{' / '.join(env['loadavg_end'])} — the host is shared: wall-clock figures are noisy,",
        "  CPU-second figures (server CPU time from /proc/PID/stat) much less so.",
        "- Servers pinned to CPU 0 (`taskset -c 0`), load generators to CPU 1; one process",
        "  each; all traffic on 127.0.0.1; every server started fresh for each benchmark.",
        "",
        "## Targets",
        "",
        "Ratios of duplex to the peers measured in this same run.",
        "",
    ]
    out += _table(["target", "goal", "measured", "met?"], targets(results))
    out.append("")
    if baseline and bname:
        out += [
            "## Against the baseline",
            "",
            f"duplex at this checkout against **{bname}**, the same benchmarks in this same",
            "run; its rows are in every table below (the targets above are this checkout's",
            f"alone). Ratio = duplex / {bname}: above 1 is better where higher is better, below",
            "1 where lower is. A worse figure is *within run spread* when the repeated runs of",
            "the two rows overlap (only the first figure of small and of echo keeps its runs;",
            "a quick run has one run each, so no spread).",
            "",
        ]
        out += _table(
            ["figure", "better", "duplex", bname, f"duplex / {bname}", "against the spread"],
            against_baseline(results, bname),
        )
        out.append("")

    if "small" in results:
        small = results["small"]
        out += [
            "## 1. Small requests",
            "",
            f"13-byte response, keep-alive, `wrk -t1 -c50 -d{sizes.wrk_seconds}s --latency` "
            f"(after a {sizes.wrk_warmup} s warm-up). Server CPU = user + system of the server",
            "process over the measured run. Each figure is the median of its "
            f"{sizes.small_repeats} run(s), taken in turns across the servers.",
            "",
        ]
        if "_skipped" in small:
            out += [f"Skipped: {small['_skipped']}", ""]
        else:
            rows = []
            floor = _get(small, "trio-h11-floor", "req_per_cpu_s")
            for name in lineup(SMALL_SERVERS, bname):
                r = small.get(name, {})
                error = _cell_error(r)
                if error:
                    rows.append([name, *error, "", "", "", "", ""])
                    continue
                rows.append(
                    [
                        name,
                        _fmt(r["rps"], 0),
                        _fmt(r["p99_ms"], 2),
                        _fmt(r["server_cpu_s"], 2),
                        _fmt(r["req_per_cpu_s"], 0),
                        _spread(r, 0),
                        _fmt(_ratio(r["req_per_cpu_s"], floor), 2),
                        _fmt(r["socket_errors"] + r["non_2xx"]),
                    ]
                )
            out += _table(
                [
                    "server",
                    "req/s",
                    "p99 ms",
                    "server CPU-s",
                    "req per server CPU-s",
                    "(runs: min to max)",
                    "x floor",
                    "errors",
                ],
                rows,
            )
            out.append("")

    if "echo" in results:
        echo = results["echo"]
        out += [
            "## 2. Full-duplex streaming echo",
            "",
            f"{sizes.echo_bytes // MIB} MiB in 64 KiB chunks over one connection, chunked "
            "request, the server echoing each chunk as it arrives; the load client",
            "(benchmarks/clients/echo_client.py, trio, raw socket) sends and reads at once.",
            '"Sent before first echo" shows whether a server echoes before the request',
            "ends (a server that buffers would show the whole body there). Each figure is",
            f"the median of its {sizes.echo_repeats} run(s), taken in turns.",
            "",
        ]
        rows = []
        for name in lineup(ECHO_SERVERS, bname):
            r = echo.get(name, {})
            error = _cell_error(r)
            if error:
                rows.append([name, *error, "", "", "", "", ""])
                continue
            first = r.get("first_byte_seconds")
            rows.append(
                [
                    name,
                    r["outcome"],
                    _fmt(r["mib_per_s"]),
                    _spread(r, 1),
                    _fmt(r["cpu_s_per_gib"], 2),
                    _fmt(None if first is None else first * 1000, 1),
                    _fmt(r["sent_at_first_echo"] / MIB, 2) + " MiB",
                    "yes" if r["sent_at_first_echo"] < r["sent"] else "**no**",
                ]
            )
        out += _table(
            [
                "server",
                "outcome",
                "MiB/s",
                "(runs: min to max)",
                "server CPU-s per GiB",
                "first echoed byte, ms",
                "sent before first echo",
                "echoes while receiving?",
            ],
            rows,
        )
        out.append("")

    if "idle" in results:
        idle = results["idle"]
        out += [
            "## 3. Idle streaming connections",
            "",
            f"{sizes.idle_connections:,} open streaming responses (`GET /idle` with `Accept:",
            "text/event-stream`: for duplex a `duplex.channel` with the heartbeat off, for the",
            "others an endless SSE response that sends nothing), opened in batches of 250 by",
            "benchmarks/clients/many_client.py (epoll). Memory = growth of the server's VmRSS",
            "from before (after a 50-connection warm-up) to after all are open.",
            "",
        ]
        rows = []
        for name in lineup(HTTP_SERVERS, bname):
            r = idle.get(name, {})
            error = _cell_error(r)
            if error:
                rows.append([name, *error, "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    _fmt(r["connections"]),
                    _fmt(r["kib_per_connection"], 1),
                    f"{r['rss_before_kib'] / 1024:,.1f} → {r['rss_after_kib'] / 1024:,.1f}",
                    _fmt(r["open_seconds"], 2),
                    _fmt(r["cpu_s_to_open"], 2),
                ]
            )
        out += _table(
            [
                "server",
                "connections",
                "KiB per connection",
                "RSS MiB before → after",
                "time to open all, s",
                "server CPU-s to open",
            ],
            rows,
        )
        out.append("")

    if "broadcast" in results:
        b = results["broadcast"]
        out += [
            "## 4. Broadcast",
            "",
            "One 100-byte message to every SSE subscriber of a `duplex.ChannelGroup`",
            "(`POST /broadcast` on the benchmark app); time from just before the request is",
            "written until the last subscriber has read the message, measured by the client",
            f"(one warm-up round, then {sizes.broadcast_rounds} rounds).",
            "",
        ]
        header = [
            "subscribers",
            "last has it, ms (median)",
            "best",
            "worst",
            "first has it, ms (median)",
            "server CPU ms per broadcast (mean)",
            "server CPU µs per subscriber",
            "missed",
            "time to subscribe, s",
        ]
        if bname:
            # One table with a server column: duplex's rows, then the baseline's.
            rows = []
            for name, found in (("duplex", b), (bname, b.get("baseline", {"error": "not run"}))):
                if "error" in found:
                    rows.append([name, _error_text(found["error"])])
                    continue
                rows += [[name, *cells] for cells in _broadcast_rows(found)]
            out += _table(["server", *header], rows)
            out.append("")
        elif "error" in b:
            out += [f"error: {b['error']}", ""]
        else:
            out += _table(header, _broadcast_rows(b))
            out.append("")

    if "client" in results:
        c = results["client"]
        out += [
            "## 5. Client side",
            "",
            f"GET over keep-alive against {c.get('get_server')} (pinned to CPU 0); each",
            "client in its own process on CPU 1, N tasks sharing one client, "
            f"{sizes.client_seconds:g} s each;",
            "httpx runs on trio (anyio), aiohttp on asyncio. Client CPU = the client",
            f"process's own CPU time. Medians of {sizes.repeats} run(s).",
            "",
        ]
        rows = []
        for concurrency in (1, 10):
            for lib in lineup(list(CLIENT_LIBS), bname):
                r = _get(c, "get", f"{lib}/c{concurrency}") or {
                    "error": _get(c, "get", "_error") or "not run"
                }
                error = _cell_error(r)
                if error:
                    rows.append([lib, str(concurrency), *error, "", ""])
                    continue
                rows.append(
                    [
                        lib,
                        str(concurrency),
                        _fmt(r["rps"], 0),
                        _fmt(r["req_per_cpu_s"], 0),
                        _fmt(r["requests"]),
                    ]
                )
        out += _table(["client", "tasks", "req/s", "req per client CPU-s", "requests"], rows)
        out += [
            "",
            f"Streaming {sizes.stream_bytes // MIB} MiB up and the same back down in 64 KiB",
            "chunks against the duplex benchmark server: `/echo` echoes as it reads (needs a",
            "client that reads while it sends), `/updown` reads the whole upload and then",
            "sends it back (any client). MiB/s = payload MiB / seconds from start to the last",
            f"byte back; medians of {sizes.repeats} run(s), taken in turns. Every client",
            "uploads the same async generator; the `duplex (Writable body)` row has another",
            "task write a `duplex.Writable` instead (informative).",
            "",
        ]
        rows = []
        for route in ("echo", "updown"):
            extra = (
                [WRITABLE_ROW]
                if route == "echo" and _get(c, "stream", f"{WRITABLE_ROW}/echo")
                else []
            )
            for lib in lineup(list(CLIENT_LIBS), bname) + extra:
                r = _get(c, "stream", f"{lib}/{route}") or {
                    "error": _get(c, "stream", "_error") or "not run"
                }
                error = _cell_error(r)
                if error:
                    rows.append([lib, route, *error, "", "", ""])
                    continue
                first = r.get("first_byte_seconds")
                rows.append(
                    [
                        lib,
                        f"/{route}",
                        r["outcome"],
                        _fmt(r["mib_per_s"]),
                        f"{r['up'] / MIB:,.1f} / {r['down'] / MIB:,.1f}",
                        _fmt(None if first is None else first * 1000, 1),
                        _fmt(r.get("client_cpu_seconds"), 2),
                    ]
                )
        out += _table(
            [
                "client",
                "route",
                "outcome",
                "MiB/s",
                "MiB up / down",
                "first byte back, ms",
                "client CPU-s",
            ],
            rows,
        )
        out.append("")
    if "h2" in results:
        h2 = results["h2"]
        out += [
            "## 6. HTTP/2",
            "",
            "HTTP/2 with prior knowledge (h2c), the same apps as above. Small requests:",
            "`h2load -c10 -m10 -nN` (10 connections, 10 streams each), N sized from a",
            f"2,000-request warm-up to last about {sizes.wrk_seconds} s. Echo: "
            f"{sizes.echo_bytes // MIB} MiB over one "
            "stream by benchmarks/clients/echo_client.py `--mode h2` (its receive window opened",
            "wide, so the server's flow control alone paces the upload); duplex's HTTP/1.1",
            f"echo in the same rounds for comparison. Medians of {sizes.repeats} run(s).",
            "",
        ]
        small = h2.get("small", {})
        if "_skipped" in small:
            out += [f"Small requests skipped: {small['_skipped']}", ""]
        else:
            rows = []
            for name in H2_SERVERS:
                r = small.get(name, {"error": "not run"})
                error = _cell_error(r)
                if error:
                    rows.append([name, *error, "", "", "", ""])
                    continue
                rows.append(
                    [
                        name,
                        _fmt(r["rps"], 0),
                        _fmt(r["server_cpu_s"], 2),
                        _fmt(r["req_per_cpu_s"], 0),
                        _spread(r, 0),
                        _fmt(r["errors"]),
                    ]
                )
            out += _table(
                [
                    "server (h2c)",
                    "req/s",
                    "server CPU-s",
                    "req per server CPU-s",
                    "(runs: min to max)",
                    "errors",
                ],
                rows,
            )
            out.append("")
        rows = []
        for name in H2_ECHO_ROWS:
            r = h2.get("echo", {}).get(name, {"error": "not run"})
            error = _cell_error(r)
            if error:
                rows.append([name, *error, "", "", "", ""])
                continue
            first = r.get("first_byte_seconds")
            rows.append(
                [
                    name,
                    r["outcome"],
                    _fmt(r["mib_per_s"]),
                    _spread(r, 1),
                    _fmt(r["cpu_s_per_gib"], 2),
                    _fmt(None if first is None else first * 1000, 1),
                ]
            )
        out += _table(
            [
                "server",
                "outcome",
                "MiB/s",
                "(runs: min to max)",
                "server CPU-s per GiB",
                "first echoed byte, ms",
            ],
            rows,
        )
        out.append("")
        by_h2load = h2.get("echo_h2load") or {}
        if by_h2load:
            out += [
                "The same echo with h2load as the client (informative: C, so that the",
                f"client costs little): `h2load -n1 -c1 -d FILE` with a {sizes.echo_bytes // MIB}"
                " MiB file, 16 KiB DATA frames sent as the server's window allows.",
                "",
            ]
            rows = []
            for name, r in by_h2load.items():
                error = _cell_error(r)
                rows.append(
                    [name, *error, "", ""]
                    if error
                    else [name, _fmt(r["mib_per_s"]), _spread(r, 1), _fmt(r["cpu_s_per_gib"], 2)]
                )
            out += _table(
                ["server (h2c)", "MiB/s", "(runs: min to max)", "server CPU-s per GiB"], rows
            )
            out.append("")
    out += [
        "## Servers",
        "",
        *[f"- **{spec.name}**: {spec.description}" for spec in SERVER_SPECS.values()],
        *([f"- **{bname}**: {baseline['description']}"] if baseline else []),
        "- Listen backlog 1024 everywhere (duplex's fixed value); access logs off.",
        "",
    ]
    report = "\n".join(_rewrap(out))
    notes = HERE / "NOTES.md"  # the analysis, kept by hand
    if notes.exists():
        report += "\n" + notes.read_text()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="development sizes")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run duplex at the git revision REV, as a row duplex@<short rev> in every "
        "table, with the ratios duplex / duplex@REV in a section of its own",
    )
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite --output from a --json file of a run"
    )
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    if shutil.which("taskset") is None:
        parser.error("taskset (util-linux) is needed to pin servers and load generators")
    if (os.cpu_count() or 1) < 2:
        parser.error("two CPUs are needed: one for the server, one for the load")
    sizes = QUICK if args.quick else FULL
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        quick = saved.get("quick", args.quick)
        report = render(saved["env"], saved["results"], QUICK if quick else FULL, quick)
        Path(args.output).write_text(report)
        print(f"wrote {args.output}")
        return
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(arg)}" for arg in sys.argv[1:])
    env = environment(command)  # before pinning: `nproc` counts the CPUs we may use
    # The orchestrator stays off the server's CPU; children inherit the file limit.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(sizes.idle_connections, *sizes.broadcast_counts) + 256
    if hard < needed:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} < {needed}", file=sys.stderr)

    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"duplex-bench-{os.getpid()}"
    logdir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    log(f"server logs in {logdir}")
    # SIGTERM unwinds like Ctrl-C: the servers are stopped and the baseline tree removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        baseline = None
        if args.baseline:
            try:
                baseline = stack.enter_context(baseline_tree(args.baseline))
            except RuntimeError as error:
                parser.error(f"--baseline {args.baseline}: {error}")
            spec = baseline.server()
            env["baseline"] = {**baseline.info(), "description": spec.description}
            log(f"baseline {baseline.name} ({baseline.commit}) extracted to {baseline.tree}")
        for name in BENCHMARKS:
            if name in only:
                log(f"== {name}")
                results[name] = RUNNERS[name](sizes, logdir, log, baseline)
                # Let the kernel tear down the last benchmark's connections before the next.
                time.sleep(SETTLE_SECONDS)
    env["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report = render(env, results, sizes, args.quick)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)
    log(f"wrote {args.output}")
    saved = json.dumps({"env": env, "results": results, "quick": args.quick}, indent=2)
    (logdir / "results.json").write_text(saved)
    log(f"raw results in {logdir / 'results.json'} (re-render with --render)")
    if args.json:
        Path(args.json).write_text(saved)
    print()
    print(report)


if __name__ == "__main__":
    main()
