"""What h11 costs per step of one small keep-alive exchange, without any I/O.

The figures behind the server's design (benchmarks/NOTES.md): h11 parses every request
head, while duplex frames bodies and writes response heads itself. Run:
``python benchmarks/h11_cost.py [--rounds N]``; prints microseconds per step.
"""

from __future__ import annotations

import argparse
import time

import h11

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
STEPS = (
    "next_event with nothing buffered",
    "receive_data",
    "next_event -> Request",
    "next_event -> EndOfMessage",
    "send Response (_parsed=True)",
    "send Data",
    "send EndOfMessage",
    "start_next_cycle",
    "a new Connection",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30_000)
    rounds = parser.parse_args().rounds
    totals = [0.0] * len(STEPS)
    clock = time.perf_counter
    connection = h11.Connection(h11.SERVER)
    for _ in range(rounds):
        marks = [clock()]
        connection.next_event()
        marks.append(clock())
        connection.receive_data(REQUEST)
        marks.append(clock())
        connection.next_event()
        marks.append(clock())
        connection.next_event()
        marks.append(clock())
        response = h11.Response(status_code=200, headers=HEADERS, reason=b"OK", _parsed=True)
        connection.send_with_data_passthrough(response)
        marks.append(clock())
        connection.send_with_data_passthrough(h11.Data(data=b"Hello, world!"))
        marks.append(clock())
        connection.send_with_data_passthrough(h11.EndOfMessage())
        marks.append(clock())
        connection.start_next_cycle()
        marks.append(clock())
        h11.Connection(h11.SERVER)
        marks.append(clock())
        for index in range(len(STEPS)):
            totals[index] += marks[index + 1] - marks[index]
    for step, total in zip(STEPS, totals, strict=True):
        print(f"{total / rounds * 1e6:7.1f} us  {step}")
    print(f"{sum(totals[:8]) / rounds * 1e6:7.1f} us  one whole cycle through h11")


if __name__ == "__main__":
    main()
