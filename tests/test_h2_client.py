"""The client over HTTP/2 (DESIGN §5): h2 by ALPN on https with a fallback to HTTP/1.1,
h2c with prior knowledge, one connection shared by concurrent streams, and each stream
full duplex exactly as over HTTP/1.1, with flow control as back-pressure.

Against hypercorn (TLS with a trustme certificate, and h2c), a raw HTTP/2 server the
test drives frame by frame through h2, and duplex's own server; and ``duplex request``
with ``--http2`` and ``--http2-prior-knowledge``.
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trio.testing
import trustme

import duplex
from _client_support import DUPLEX, SUBPROCESS_TIMEOUT, echo, echo_process, start_duplex, url
from _h2_client_support import H2Peer, RawH2Server, hypercorn_h2, tls_contexts
from duplex.http.h2client import H2ResponseBody

TIMEOUT = 10.0
"""Seconds any one test may take: only a hang ever comes close."""


@pytest.fixture
def tls() -> tuple[trustme.CA, ssl.SSLContext]:
    """A certificate authority, and a client context of this test's own (an HTTP/2
    client sets its ALPN protocols)."""
    return tls_contexts()


async def read_at_least(body: duplex.Readable, size: int) -> bytes:
    """Read chunks until ``size`` bytes have come (a peer may split or merge them)."""
    received = b""
    while len(received) < size:
        chunk = await body.read()
        assert chunk, f"the body ended after {len(received)} bytes"
        received += chunk
    return received


# -- against hypercorn -----------------------------------------------------------------


async def test_a_get_over_tls_speaks_http2_when_the_server_picks_it_by_alpn(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca) as server,
            duplex.Client(ssl_context=context, http2=True) as client,
        ):
            response = await client.get(server.url + "/")
            assert response.status == 200
            assert response.http_version == "2"
            assert await response.read() == b"hello over h2"
            assert server.http_versions == ["2"]


async def test_a_post_over_h2c_with_prior_knowledge() -> None:
    with trio.fail_after(TIMEOUT):
        async with hypercorn_h2() as server, duplex.Client(http2="prior-knowledge") as client:
            response = await client.post(server.url + "/echo", body=b"ping")
            assert response.http_version == "2"
            assert await response.read() == b"ping"


async def test_http2_true_keeps_plain_http_on_http11() -> None:
    with trio.fail_after(TIMEOUT):
        async with hypercorn_h2() as server, duplex.Client(http2=True) as client:
            response = await client.get(server.url + "/")
            assert response.http_version == "1.1"
            assert await response.read() == b"hello over h2"


async def test_the_default_client_speaks_http11_over_tls(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        async with hypercorn_h2(ca) as server, duplex.Client(ssl_context=context) as client:
            response = await client.get(server.url + "/")
            assert response.http_version == "1.1"
            await response.read()


async def test_falls_back_to_http11_when_the_server_offers_only_http11(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca, alpn=["http/1.1"]) as server,
            duplex.Client(ssl_context=context, http2=True) as client,
        ):
            for _ in range(2):
                response = await client.post(server.url + "/echo", body=b"over 1.1")
                assert response.http_version == "1.1"
                assert await response.read() == b"over 1.1"
            assert client.pool.http2_connections() == 0
            assert len(server.client_ports) == 1


async def test_concurrent_requests_after_an_alpn_fallback_each_get_a_connection(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca, alpn=["http/1.1"]) as server,
            duplex.Client(ssl_context=context, http2=True) as client,
        ):
            outputs = [duplex.Writable() for _ in range(3)]
            responses: list[duplex.ClientResponse] = []

            async def post(output: duplex.Writable) -> None:
                responses.append(await client.post(server.url + "/echo", body=output))

            # Three streaming requests at once: none waits for another's connection.
            async with trio.open_nursery() as requests:
                for output in outputs:
                    requests.start_soon(post, output)
            assert [response.http_version for response in responses] == ["1.1"] * 3
            for output in outputs:
                await output.close_write()
            for response in responses:
                assert await response.read() == b""


async def test_prior_knowledge_over_tls_fails_clearly_when_the_server_will_not_speak_h2(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca, alpn=["http/1.1"]) as server,
            duplex.Client(ssl_context=context, http2="prior-knowledge") as client,
        ):
            with pytest.raises(duplex.ProtocolError, match="HTTP/2"):
                await client.get(server.url + "/")
            assert client.pool.open_connections() == 0


async def test_an_http11_client_whose_context_offers_h2_fails_clearly(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    context.set_alpn_protocols(["h2", "http/1.1"])  # as an HTTP/2 client sharing it would
    with trio.fail_after(TIMEOUT):
        async with hypercorn_h2(ca) as server, duplex.Client(ssl_context=context) as client:
            with pytest.raises(duplex.ProtocolError, match="offers h2"):
                await client.get(server.url + "/")


def test_http2_takes_false_true_or_prior_knowledge_only() -> None:
    with pytest.raises(ValueError, match="prior-knowledge"):
        duplex.Client(http2="h2c")  # type: ignore[arg-type]


async def test_a_4_mib_upload_is_echoed_whole(tls: tuple[trustme.CA, ssl.SSLContext]) -> None:
    ca, context = tls
    data = bytes(range(256)) * (4 * 4096)
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca) as server,
            duplex.Client(ssl_context=context, http2=True) as client,
        ):
            response = await client.post(server.url + "/echo", body=data)
            assert await response.read() == data


async def test_a_streamed_upload_is_echoed_as_it_goes(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca) as server,
            duplex.Client(ssl_context=context, http2=True) as client,
        ):
            output = duplex.Writable()
            response = await client.post(server.url + "/echo", body=output)
            for chunk in (b"one", b"two", b"three"):
                await output.write(chunk)
                assert await read_at_least(response.body, len(chunk)) == chunk
            await output.close_write()
            assert await response.body.read() == b""


async def test_concurrent_requests_share_one_connection(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, context = tls
    results: dict[int, bytes] = {}
    with trio.fail_after(TIMEOUT):
        async with (
            hypercorn_h2(ca) as server,
            duplex.Client(ssl_context=context, http2=True) as client,
        ):

            async def post(index: int) -> None:
                response = await client.post(server.url + "/echo", body=b"%d" % index * 1000)
                results[index] = await response.read()

            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(post, index)
            assert results == {index: b"%d" % index * 1000 for index in range(20)}
            assert len(server.client_ports) == 1
            assert client.pool.open_connections() == 1
            assert client.pool.http2_connections() == 1


# -- against a raw HTTP/2 server -------------------------------------------------------


async def test_reads_the_echo_of_each_chunk_before_writing_the_next(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                await peer.echo()

            nursery.start_soon(serve)
            output = duplex.Writable()
            response = await client.post(server.url + "/", body=output)
            assert response.http_version == "2"
            stream = duplex.Stream(response.body, output)
            for chunk in (b"chunk one", b"chunk two", b"chunk three"):
                await stream.write(chunk)
                assert await stream.read_exactly(len(chunk)) == chunk
            await stream.close_write()
            assert await stream.read() == b""


async def test_the_stream_window_is_given_back_only_as_the_caller_reads(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:
            peers: trio.MemorySendChannel[H2Peer]
            peers, peer_taken = trio.open_memory_channel[H2Peer](1)

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                window = peer.h2.local_flow_control_window(request.stream_id)
                for _ in range(window // 16384):
                    peer.h2.send_data(request.stream_id, b"x" * 16384)
                peer.h2.send_data(request.stream_id, b"x" * (window % 16384))
                await peer.send()
                await peers.send(peer)

            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            peer = await peer_taken.receive()
            sid = 1
            assert peer.h2.local_flow_control_window(sid) == 0
            updates: list[int] = []
            updated = trio.Event()

            async def watch_updates() -> None:
                updates.append((await peer.next(h2.events.WindowUpdated, sid)).delta)
                updated.set()

            nursery.start_soon(watch_updates)
            # The client holds a full window unread: nothing may come back for it.
            await trio.testing.wait_all_tasks_blocked()
            assert updates == []
            read = await read_at_least(response.body, 16384)
            await updated.wait()
            assert updates == [len(read)]


async def test_an_8_mib_bytes_body_against_an_echo_never_deadlocks(nursery: trio.Nursery) -> None:
    data = bytes(range(256)) * (8 * 4096)
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                await peer.echo()

            nursery.start_soon(serve)
            response = await client.post(server.url + "/", body=data)
            assert await response.read() == data


async def test_a_hundred_concurrent_streams_come_back_intact(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                await peer.echo()

            nursery.start_soon(serve)
            results: dict[int, bytes] = {}

            async def post(index: int) -> None:
                response = await client.post(server.url + "/", body=b"%03d" % index * 2000)
                results[index] = await response.read()

            async with trio.open_nursery() as requests:
                for index in range(100):
                    requests.start_soon(post, index)
            assert results == {index: b"%03d" % index * 2000 for index in range(100)}
            assert server.connections == 1


async def test_requests_beyond_the_servers_stream_limit_wait_for_a_free_stream(
    nursery: trio.Nursery,
) -> None:
    limits = duplex.ClientLimits(max_connections_per_origin=1)
    settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2}
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery, settings)
        async with duplex.Client(http2="prior-knowledge", limits=limits) as client:

            async def serve() -> None:
                peer = await server.accept()
                async with trio.open_nursery() as streams:
                    for _ in range(5):
                        request = await peer.next(h2.events.RequestReceived)
                        peer.respond(request.stream_id)
                        peer.h2.send_data(request.stream_id, b"ok", end_stream=True)
                        await peer.send()
                    await peer.closed.wait()
                    streams.cancel_scope.cancel()

            nursery.start_soon(serve)
            bodies: list[bytes] = []

            async def get() -> None:
                response = await client.get(server.url + "/")
                bodies.append(await response.read())

            async with trio.open_nursery() as requests:
                for _ in range(5):
                    requests.start_soon(get)
            assert bodies == [b"ok"] * 5
            assert server.connections == 1


async def test_two_reads_at_once_raise_busy_resource_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            async with trio.open_nursery() as readers:
                readers.start_soon(response.body.read)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await response.body.read()
                readers.cancel_scope.cancel()


async def test_the_trailers_of_a_response_are_kept_on_its_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                peer.h2.send_data(request.stream_id, b"body")
                peer.h2.send_headers(request.stream_id, [(b"grpc-status", b"0")], end_stream=True)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            assert await response.read() == b"body"
            assert isinstance(response.body, H2ResponseBody)
            assert response.body.trailers == [(b"grpc-status", b"0")]


async def test_a_stream_reset_breaks_the_response_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                peer.h2.send_data(request.stream_id, b"partial")
                peer.h2.reset_stream(request.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            # As a Writable closed with an error: what was queued is dropped.
            with pytest.raises(trio.BrokenResourceError, match="INTERNAL_ERROR"):
                await response.body.read()
            with pytest.raises(trio.BrokenResourceError):
                await response.body.read()


async def test_a_reset_stream_leaves_the_connection_to_the_other_streams(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                first = await peer.next(h2.events.RequestReceived)
                peer.h2.reset_stream(first.stream_id, h2.errors.ErrorCodes.CANCEL)
                await peer.send()
                second = await peer.next(h2.events.RequestReceived)
                peer.respond(second.stream_id)
                peer.h2.send_data(second.stream_id, b"fine", end_stream=True)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            with pytest.raises(duplex.ProtocolError, match="CANCEL"):
                await client.get(server.url + "/")
            response = await client.get(server.url + "/")
            assert await response.read() == b"fine"
            assert server.connections == 1


async def test_a_response_with_a_malformed_status_fails_only_its_request(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                peer.h2.config.validate_outbound_headers = False
                first = await peer.next(h2.events.RequestReceived)
                peer.h2.send_headers(first.stream_id, [(b":status", b"2x0")], end_stream=True)
                await peer.send()
                second = await peer.next(h2.events.RequestReceived)
                peer.respond(second.stream_id)
                peer.h2.send_data(second.stream_id, b"fine", end_stream=True)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            with pytest.raises(duplex.ProtocolError, match="status"):
                await client.get(server.url + "/")
            assert await (await client.get(server.url + "/")).read() == b"fine"
            assert server.connections == 1


async def test_streams_above_a_goaways_last_id_go_again_on_a_new_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def first_connection() -> None:
                peer = await server.accept()
                nursery.start_soon(second_connection)
                one = await peer.next(h2.events.RequestReceived)
                await peer.next(h2.events.RequestReceived)
                peer.h2.close_connection(last_stream_id=one.stream_id)
                # h2 sends nothing after its GOAWAY; the stream it kept goes on.
                peer.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
                peer.respond(one.stream_id)
                peer.h2.send_data(one.stream_id, b"first", end_stream=True)
                await peer.send()
                await peer.closed.wait()

            async def second_connection() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                peer.h2.send_data(request.stream_id, b"second", end_stream=True)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(first_connection)
            answers: list[bytes] = []

            async def get() -> None:
                response = await client.get(server.url + "/")
                answers.append(await response.read())

            async with trio.open_nursery() as requests:
                requests.start_soon(get)
                await trio.testing.wait_all_tasks_blocked()
                requests.start_soon(get)
            assert sorted(answers) == [b"first", b"second"]
            assert server.connections == 2
            assert client.pool.http2_connections() == 1


async def test_a_streamed_request_above_a_goaways_last_id_fails_clearly(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                await peer.next(h2.events.RequestReceived)
                peer.h2.close_connection(last_stream_id=0)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            with pytest.raises(duplex.ProtocolError, match="GOAWAY"):
                await client.post(server.url + "/", body=duplex.Writable())
            assert client.pool.open_connections() == 0


async def test_a_dead_connection_leaves_the_pool(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                await peer.stream.aclose()

            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            with pytest.raises(duplex.ProtocolError):
                await response.body.read()
            assert client.pool.open_connections() == 0


async def test_a_kept_connection_the_server_closed_unanswered_is_retried_on_a_new_one(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def first_connection() -> None:
                peer = await server.accept()
                nursery.start_soon(second_connection)
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                peer.h2.send_data(request.stream_id, b"first", end_stream=True)
                await peer.send()
                await peer.next(h2.events.RequestReceived)
                await peer.stream.aclose()  # closed as idle, the request crossing it

            async def second_connection() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                peer.h2.send_data(request.stream_id, b"second", end_stream=True)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(first_connection)
            assert await (await client.get(server.url + "/")).read() == b"first"
            assert await (await client.get(server.url + "/")).read() == b"second"
            assert server.connections == 2


async def test_a_request_body_shorter_than_its_content_length_resets_its_stream(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:
            reset = trio.Event()

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                await peer.next(h2.events.StreamReset, request.stream_id)
                reset.set()

            nursery.start_soon(serve)
            output = duplex.Writable(length=10)
            response = await client.post(server.url + "/", body=output)
            await output.write(b"short")
            await output.close_write()
            await reset.wait()
            with pytest.raises(duplex.ProtocolError, match="Content-Length"):
                await response.body.read()


async def test_a_bytes_body_that_contradicts_its_content_length_is_refused(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:
            with pytest.raises(duplex.ProtocolError, match="Content-Length"):
                await client.post(server.url + "/", body=b"four", headers={"content-length": "5"})


# -- timeouts, cancellation, closing ---------------------------------------------------


async def test_a_silent_stream_raises_a_read_timeout(nursery: trio.Nursery) -> None:
    limits = duplex.ClientLimits(read_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge", limits=limits) as client:
            resets: list[int] = []
            reset = trio.Event()

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                resets.append((await peer.next(h2.events.StreamReset)).error_code)
                reset.set()

            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            with pytest.raises(duplex.Timeout) as caught:
                await response.body.read()
            assert caught.value.phase == "read"
            await reset.wait()
            assert resets == [h2.errors.ErrorCodes.CANCEL]


async def test_a_window_that_stays_shut_raises_a_write_timeout(nursery: trio.Nursery) -> None:
    limits = duplex.ClientLimits(write_timeout=0.2)
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge", limits=limits) as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                await peer.closed.wait()  # reads nothing: the window never opens again

            nursery.start_soon(serve)
            response = await client.post(server.url + "/", body=b"x" * 200_000)
            with pytest.raises(duplex.Timeout) as caught:
                await response.body.read()
            assert caught.value.phase == "write"


async def test_a_request_waits_for_a_free_stream_no_longer_than_the_pool_timeout(
    nursery: trio.Nursery,
) -> None:
    limits = duplex.ClientLimits(max_connections_per_origin=1, pool_timeout=0.2)
    settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery, settings)
        async with duplex.Client(http2="prior-knowledge", limits=limits) as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            first = await client.get(server.url + "/")
            with pytest.raises(duplex.Timeout) as caught:
                await client.get(server.url + "/")
            assert caught.value.phase == "pool"
            await first.aclose()


async def test_a_request_cancelled_before_its_head_resets_only_its_stream(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                first = await peer.next(h2.events.RequestReceived)
                reset = await peer.next(h2.events.StreamReset)
                assert reset.stream_id == first.stream_id
                second = await peer.next(h2.events.RequestReceived)
                peer.respond(second.stream_id)
                peer.h2.send_data(second.stream_id, b"still here", end_stream=True)
                await peer.send()
                await peer.closed.wait()

            nursery.start_soon(serve)
            async with trio.open_nursery() as waiting:
                waiting.start_soon(client.get, server.url + "/")
                await trio.testing.wait_all_tasks_blocked()
                waiting.cancel_scope.cancel()
            response = await client.get(server.url + "/")
            assert await response.read() == b"still here"
            assert server.connections == 1


async def test_closing_the_response_resets_the_stream(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:
            reset = trio.Event()

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id)
                await peer.send()
                await peer.next(h2.events.StreamReset, request.stream_id)
                reset.set()

            nursery.start_soon(serve)
            response = await client.post(server.url + "/", body=duplex.Writable())
            await response.aclose()
            await reset.wait()


# -- against duplex's own server -------------------------------------------------------


async def duplex_echo_url(nursery: trio.Nursery, ca: trustme.CA | None = None) -> str:
    """duplex's server running the echo ``Streamable`` (h2 by ALPN with a certificate
    from ``ca``, else cleartext with h2c by prior knowledge); its URL."""
    if ca is None:
        return url(await start_duplex(nursery, echo))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return url(await start_duplex(nursery, echo, ssl_context=context), scheme="https")


@pytest.mark.parametrize("transport", ["h2c", "tls"])
async def test_full_duplex_against_duplexs_own_server(
    nursery: trio.Nursery, tls: tuple[trustme.CA, ssl.SSLContext], transport: str
) -> None:
    ca, context = tls
    with trio.fail_after(TIMEOUT):
        address = await duplex_echo_url(nursery, ca if transport == "tls" else None)
        http2: bool | Literal["prior-knowledge"] = transport == "tls" or "prior-knowledge"
        async with duplex.Client(ssl_context=context, http2=http2) as client:
            output = duplex.Writable()
            response = await client.post(address, body=output)
            assert response.http_version == "2"
            stream = duplex.Stream(response.body, output)
            for chunk in (b"chunk one", b"chunk two", b"chunk three"):
                await stream.write(chunk)
                assert await stream.read_exactly(len(chunk)) == chunk
            await stream.close_write()
            assert await stream.read() == b""


@pytest.mark.parametrize("transport", ["h2c", "tls"])
async def test_an_8_mib_bytes_post_to_duplexs_echo_comes_back_whole(
    nursery: trio.Nursery, tls: tuple[trustme.CA, ssl.SSLContext], transport: str
) -> None:
    ca, context = tls
    data = random.Random(8).randbytes(8 << 20)
    with trio.fail_after(4 * TIMEOUT):
        address = await duplex_echo_url(nursery, ca if transport == "tls" else None)
        http2: bool | Literal["prior-knowledge"] = transport == "tls" or "prior-knowledge"
        async with duplex.Client(ssl_context=context, http2=http2) as client:
            response = await client.post(address, body=data)
            assert response.http_version == "2"
            assert await response.read() == data


async def test_concurrent_posts_to_duplexs_server_share_one_connection(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        address = await duplex_echo_url(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:
            results: dict[int, bytes] = {}

            async def post(index: int) -> None:
                response = await client.post(address, body=b"%02d" % index * 5000)
                results[index] = await response.read()

            async with trio.open_nursery() as requests:
                for index in range(50):
                    requests.start_soon(post, index)
            assert results == {index: b"%02d" % index * 5000 for index in range(50)}
            assert client.pool.open_connections() == 1


async def test_responses_dropped_unread_free_their_streams(nursery: trio.Nursery) -> None:
    async def endless(request: duplex.Request) -> duplex.Response:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 16384

        return duplex.Response(200, body=chunks())

    # Three streams at once; five resets stay within the server's budget against rapid
    # reset (twice its stream limit at once).
    limits = duplex.Limits(max_concurrent_streams=3)
    client_limits = duplex.ClientLimits(max_connections_per_origin=1)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, endless, limits=limits)
        async with duplex.Client(http2="prior-knowledge", limits=client_limits) as client:
            for _ in range(5):
                response = await client.get(url(server))
                assert await response.body.read()
                del response  # unread: its stream is given up, then freed
            assert client.pool.open_connections() == 1


async def test_a_stream_in_flight_finishes_through_duplexs_graceful_shutdown(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo)
        async with duplex.Client(http2="prior-knowledge") as client:
            output = duplex.Writable()
            response = await client.post(url(server), body=output)
            stream = duplex.Stream(response.body, output)
            await stream.write(b"before")
            assert await stream.read_exactly(6) == b"before"
            nursery.start_soon(server.shutdown, TIMEOUT)  # GOAWAY, then a grace period
            await trio.testing.wait_all_tasks_blocked()
            await stream.write(b"after")
            assert await stream.read_exactly(5) == b"after"
            await stream.close_write()
            assert await stream.read() == b""
            # The connection took no new stream, and closed with its last one.
            assert client.pool.open_connections() == 0


async def test_falls_back_to_http11_against_duplexs_server_with_http2_off(
    nursery: trio.Nursery, tls: tuple[trustme.CA, ssl.SSLContext]
) -> None:
    ca, context = tls
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo, ssl_context=server_context, http2=False)
        async with duplex.Client(ssl_context=context, http2=True) as client:
            output = duplex.Writable()
            response = await client.post(url(server, scheme="https"), body=output)
            assert response.http_version == "1.1"
            await output.write(b"over 1.1")
            assert await read_at_least(response.body, 8) == b"over 1.1"
            await output.close_write()
            assert await response.body.read() == b""


async def test_redirects_are_followed_over_the_same_connection(nursery: trio.Nursery) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/old":
            return duplex.Response(302, headers={"location": "/new"}, body=b"moved")
        return duplex.Response(200, body=f"{request.method} {request.path}".encode())

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client(http2="prior-knowledge", follow_redirects=True) as client:
            response = await client.post(url(server, "/old"), body=b"data")
            assert response.http_version == "2"
            assert await response.read() == b"GET /new"
            assert client.pool.open_connections() == 1


# -- the command line ------------------------------------------------------------------


async def test_duplex_request_speaks_h2c_with_prior_knowledge() -> None:
    data = random.Random(2).randbytes(1 << 20)
    with trio.fail_after(SUBPROCESS_TIMEOUT):
        async with echo_process() as address:
            result = await trio.run_process(
                [*DUPLEX, "request", "POST", address, "--http2-prior-knowledge"],
                stdin=data,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 0, result.stderr
        assert result.stdout == data


async def test_duplex_request_with_http2_speaks_h2_over_tls(
    tls: tuple[trustme.CA, ssl.SSLContext], tmp_path: Path
) -> None:
    ca, _ = tls
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with trio.fail_after(SUBPROCESS_TIMEOUT):
        async with hypercorn_h2(ca) as server:
            result = await trio.run_process(
                [*DUPLEX, "request", "--http2", "POST", server.url + "/echo"],
                stdin=b"over h2",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**os.environ, "SSL_CERT_FILE": str(ca_file)},
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"over h2"
            assert server.http_versions == ["2"]


async def test_a_closing_client_says_goodbye_with_goaway(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await RawH2Server.start(nursery)
        async with duplex.Client(http2="prior-knowledge") as client:

            async def serve() -> None:
                peer = await server.accept()
                request = await peer.next(h2.events.RequestReceived)
                peer.respond(request.stream_id, end=True)
                await peer.send()
                goodbye = await peer.next(h2.events.ConnectionTerminated)
                assert goodbye.error_code == h2.errors.ErrorCodes.NO_ERROR
                served.set()

            served = trio.Event()
            nursery.start_soon(serve)
            response = await client.get(server.url + "/")
            assert response.status == 200
        await served.wait()
