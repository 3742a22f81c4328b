"""duplex: bidirectional byte streams over HTTP, on Trio."""

from ._body import Buffered, Readable, Writable
from ._errors import IncompleteRead
from ._stream import Stream

__all__ = [
    "Buffered",
    "IncompleteRead",
    "Readable",
    "Stream",
    "Writable",
]

__version__ = "0.1.0"
