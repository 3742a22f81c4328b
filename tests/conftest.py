"""Both I/O paths: tests that must hold on Linux's fast path and on the portable one
(plain trio, as where ``MSG_DONTWAIT``, ``os.writev`` or ``select.poll`` are missing)
run twice, ``[fast]`` and ``[portable]``.

A module takes part when its name starts with one of ``BOTH_PATHS_PREFIXES``, or when
it says so itself with ``pytestmark = pytest.mark.both_paths`` (a single test can carry
the mark too). Servers and clients read the switch when they start, so everything a
test starts runs on the path of its run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duplex.http._platform import force_portable

#: Test modules run on both paths, by the start of their name.
BOTH_PATHS_PREFIXES: tuple[str, ...] = (
    "test_client_",
    "test_server_",
    "test_channel_",
    "test_group",
    "test_sse",
)

PATHS = ["fast", "portable"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_paths: run the test on the fast I/O path and on the portable one"
    )


def _runs_both_paths(metafunc: pytest.Metafunc) -> bool:
    if metafunc.definition.get_closest_marker("both_paths") is not None:
        return True
    name: str = metafunc.module.__name__
    return name.rpartition(".")[2].startswith(BOTH_PATHS_PREFIXES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "io_path" in metafunc.fixturenames and _runs_both_paths(metafunc):
        metafunc.parametrize("io_path", PATHS, indirect=True)


@pytest.fixture(autouse=True)
def io_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The I/O path of this run: ``"fast"`` (whatever the platform offers) or
    ``"portable"`` (forced); tests not run on both paths keep the environment's."""
    path: str | None = getattr(request, "param", None)
    if path is None:
        yield "default"
        return
    force_portable(path == "portable")
    try:
        yield path
    finally:
        force_portable(None)
