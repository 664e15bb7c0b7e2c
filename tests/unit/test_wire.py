import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencevol import wire
from fencevol.errors import ProtocolError

messages = st.dictionaries(st.text(max_size=8), st.one_of(
    st.integers(), st.text(max_size=20), st.booleans(), st.none()), max_size=5)


@given(messages, st.binary(max_size=2048), st.integers(1, 64))
def test_roundtrip_in_chunks(msg, payload, chunk):
    data = wire.encode(msg, payload) + wire.encode({"next": 1})
    dec = wire.FrameDecoder()
    frames = []
    for i in range(0, len(data), chunk):
        dec.feed(data[i:i + chunk])
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    assert frames == [(msg, payload), ({"next": 1}, b"")]
    assert dec.buffered == 0


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_every_flipped_byte_is_detected(payload, data):
    frame = bytearray(wire.encode({"op": "write", "offset": 4096}, payload))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    dec = wire.FrameDecoder()
    dec.feed(bytes(frame))
    try:
        got = dec.next_frame()
    except ProtocolError:
        return
    # A flip in a length field can only make the decoder wait for bytes that never
    # come (the connection then ends "inside a frame"); it never yields data.
    assert got is None


def test_limits_and_garbage():
    dec = wire.FrameDecoder(max_json=10)
    dec.feed(wire.encode({"a": "0123456789"}))
    with pytest.raises(ProtocolError, match="exceeds limit"):
        dec.next_frame()
    dec = wire.FrameDecoder()
    dec.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="magic"):
        dec.next_frame()
    dec = wire.FrameDecoder()
    dec.feed(b"FV\x09" + bytes(17))
    with pytest.raises(ProtocolError, match="version 9"):
        dec.next_frame()


def test_control_request_to_a_vclient_that_goes_away_is_unavailable(tmp_path):
    """A node killed while answering `vclient status` gives a one-line error, not a
    traceback (tools/cluster status met a ConnectionResetError this way)."""
    import socket
    import threading

    from fencevol.errors import Unavailable
    from vclient import control

    path = str(tmp_path / "c.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def reset():
        conn, _ = srv.accept()
        conn.recv(1, socket.MSG_PEEK)   # the request has arrived, and stays unread
        conn.close()                    # closing with unread data resets the peer

    t = threading.Thread(target=reset)
    t.start()
    try:
        import pytest
        with pytest.raises(Unavailable, match="went away"):
            control.request(path, "status", timeout=5)
    finally:
        t.join()
        srv.close()


def test_decoder_refuses_deep_nesting_and_huge_integers_cleanly():
    """Issue 10, finding 8: these raised past the decoder (a traceback, the
    session's other requests cancelled)."""
    import struct

    import pytest

    from fencevol import wire
    from fencevol.errors import ProtocolError
    for body in (b"[" * 2000 + b"]" * 2000, b'{"id": ' + b"9" * 5000 + b"}"):
        head = wire.HEADER.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, len(body), 0, 0, 0)[:16]
        frame = head + struct.pack(">I", wire.crc32c(body, wire.crc32c(head))) + body
        dec = wire.FrameDecoder()
        dec.feed(frame)
        with pytest.raises(ProtocolError):
            dec.next_frame()


def test_a_key_file_that_is_a_fifo_or_a_directory_is_refused_at_once(tmp_path):
    import os

    import pytest

    from fencevol import auth
    from fencevol.errors import AuthError
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path in (fifo, tmp_path):
        with pytest.raises(AuthError, match="not a regular file"):
            auth.load_key_file(str(path))


def test_every_error_class_comes_back_from_the_wire():
    """Issue 11: the code-to-class table was a closed list that missed MetadataError
    (a peer got a plain error, exit status 1 instead of its own)."""
    from fencevol import errors

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    import vclient.decisions  # noqa: F401  (its errors register on import)
    import vserver.model  # noqa: F401
    classes = [c for c in subclasses(errors.FencevolError) if "code" in c.__dict__]
    assert {c.code for c in classes} >= {"metadata", "invalid", "auth", "reservation_conflict"}
    for cls in classes:
        back = errors.from_wire(cls("m").to_wire())
        assert type(back) is cls and back.exit_code == cls.exit_code and str(back) == "m"
