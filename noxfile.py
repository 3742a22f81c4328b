"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, and
``nox -s bench`` (not run by default, nor by CI)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "guides", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "guides", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy", "trustme")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """duplex against its peers: ``nox -s bench -- [--quick] [--only small,echo,...]``;
    ``-- --baseline REV`` adds duplex at the git revision REV as a row of its own.

    Needs ``wrk`` and ``taskset`` on the PATH and two CPUs; writes docs/benchmarks.md.
    The peers are listed here rather than as an extra of the package.
    """
    session.install(
        "-e",
        ".",
        "h11",
        "trio",
        "uvicorn[standard]",
        "hypercorn[trio]",
        "granian",
        "h2",
        "aiohttp",
        "httpx",
    )
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The long reliability runs (docs/reliability.md): 2,000 mixed clients for 60 s,
    a 20 MiB slow reader, and ten times the fuzzing examples."""
    session.install("-e", ".[test]")
    session.run("python", "tests/soak.py", "--clients", "2000", "--duration", "60", "--pause", "10")
    session.run(
        "pytest",
        "tests/test_reliability_slow_peers.py",
        "-k",
        "slow_reader",
        env={"DUPLEX_SLOW_READER_MIB": "20"},
    )
    session.run("pytest", "tests/test_reliability_fuzz.py", env={"DUPLEX_FUZZ_EXAMPLES": "1500"})
