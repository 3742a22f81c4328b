"""HTTP/1.1: the wire grammar (h11 for heads, duplex's own body framing) and its drivers."""
