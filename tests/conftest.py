"""Two axes a test can run along: the I/O path and the protocol.

Both I/O paths: tests that must hold on Linux's fast path and on the portable one
(plain trio, as where ``MSG_DONTWAIT``, ``os.writev`` or ``select.poll`` are missing)
run twice, ``[fast]`` and ``[portable]``. A module takes part when its name starts with
one of ``BOTH_PATHS_PREFIXES``, or when it says so itself with
``pytestmark = pytest.mark.both_paths`` (a single test can carry the mark too). Servers
and clients read the switch when they start, so everything a test starts runs on the
path of its run.

Both protocols: a test marked ``pytest.mark.both_protocols`` (or a module whose
``pytestmark`` has it) runs twice more, ``[h1]`` and ``[h2]``. In an ``[h2]`` run every
``duplex.Client`` the test makes without saying ``http2=`` speaks h2c with prior
knowledge (the keyword's default is patched to ``"prior-knowledge"`` for the test),
which duplex's servers answer on the same port as HTTP/1.1. A test that needs more (a
raw peer of each protocol, an assertion on one protocol's framing) asks for the
``protocol`` fixture: ``"h1"`` or ``"h2"`` in a run of each, ``"h1"`` in a test not
marked; ``_protocol_support`` has the raw peers of either protocol (``exchange``,
``ask``, ``WebSocketPeer``). What only HTTP/1.1 has (chunked framing, Content-Length, keep-alive,
pipelining, 100-continue, a raw socket's bytes) stays unmarked, or, in a module marked
as a whole, says ``pytest.mark.both_protocols(False)``. A test that fails over
HTTP/2 for a known bug carries ``pytest.mark.xfail_over_h2(reason)`` too: its ``[h2]``
runs are ``xfail(strict=True)``, so that the fix shows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import duplex
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

#: The protocols of a test marked ``both_protocols``.
PROTOCOLS = ["h1", "h2"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_paths: run the test on the fast I/O path and on the portable one"
    )
    config.addinivalue_line(
        "markers",
        "both_protocols: run the test over HTTP/1.1 and over HTTP/2 (h2c, prior knowledge)",
    )
    config.addinivalue_line(
        "markers", "xfail_over_h2(reason): the [h2] runs of the test fail for a known bug"
    )


def _runs_both_paths(metafunc: pytest.Metafunc) -> bool:
    if metafunc.definition.get_closest_marker("both_paths") is not None:
        return True
    name: str = metafunc.module.__name__
    return name.rpartition(".")[2].startswith(BOTH_PATHS_PREFIXES)


def _runs_both_protocols(metafunc: pytest.Metafunc) -> bool:
    marker = metafunc.definition.get_closest_marker("both_protocols")
    return marker is not None and marker.args != (False,)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "io_path" in metafunc.fixturenames and _runs_both_paths(metafunc):
        metafunc.parametrize("io_path", PATHS, indirect=True)
    if "protocol" in metafunc.fixturenames and _runs_both_protocols(metafunc):
        metafunc.parametrize("protocol", PROTOCOLS, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        known_bug = item.get_closest_marker("xfail_over_h2")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if known_bug is not None and params.get("protocol") == "h2":
            item.add_marker(pytest.mark.xfail(strict=True, reason=known_bug.args[0]))


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


@pytest.fixture(autouse=True)
def protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The protocol of this run: ``"h1"``, or ``"h2"`` where every ``duplex.Client``
    made without ``http2=`` speaks h2c with prior knowledge; ``"h1"`` in tests not
    marked ``both_protocols``."""
    name: str = getattr(request, "param", "h1")
    if name == "h2":
        defaults = duplex.Client.__init__.__kwdefaults__
        assert defaults is not None and "http2" in defaults
        monkeypatch.setitem(defaults, "http2", "prior-knowledge")
    return name
