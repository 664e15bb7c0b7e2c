"""Messages of remote I/O: a node without a path to a disk reads, writes and syncs
through the server, under its delegation (patent ¶0046). The data is the frame's
payload, not a field."""

from __future__ import annotations

from typing import ClassVar

from .base import Message, message


@message
class ReadRequest(Message):
    """Read ``length`` bytes at ``offset``; ``plex``: from that plex only."""
    OP: ClassVar[str] = "read"
    delegation: str
    offset: int
    length: int
    plex: int | None = None


@message
class ReadReply(Message):
    """``length``: the bytes in the payload (short at the end of the volume)."""
    OP: ClassVar[str] = "read"
    KIND: ClassVar[str] = "reply"
    length: int


@message
class WriteRequest(Message):
    """Write the payload at ``offset`` to every plex, or to ``plex`` only (the
    segments a client cannot reach itself); ``sync``: fdatasync before answering."""
    OP: ClassVar[str] = "write"
    delegation: str
    offset: int
    plex: int | None = None
    sync: bool = False


@message
class WriteReply(Message):
    OP: ClassVar[str] = "write"
    KIND: ClassVar[str] = "reply"
    length: int


@message
class SyncRequest(Message):
    OP: ClassVar[str] = "sync"
    delegation: str


@message
class SyncReply(Message):
    OP: ClassVar[str] = "sync"
    KIND: ClassVar[str] = "reply"
