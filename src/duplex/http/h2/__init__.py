"""HTTP/2 on h2: the server connection's trio driver, each stream an exchange.

``_connection`` reads the socket and feeds h2, ``_exchange`` sends one stream's
response within its flow-control window, ``_bodies`` are a stream's request body and
``Streamable`` output, ``_respond`` answers a stream with the handler's ``Response``.
"""
