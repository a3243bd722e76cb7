"""ttrpc framing, and NRI's multiplexing of two ttrpc connections over one unix socket.

ttrpc message: a 10-byte header (payload length u32, stream id u32, message
type u8, flags u8; big-endian) then the payload, a protobuf `ttrpc.Request` or
`ttrpc.Response`. Clients number their streams with odd ids, growing.

NRI carries two ttrpc connections over one socket, each chunk framed by an
8-byte header (connection id u32, chunk length u32): connection 1 serves the
plugin (the runtime calls it), connection 2 the runtime (the plugin calls it).
A ttrpc message may span several chunks, so each connection is a byte stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct(">IIBB")
MESSAGE_LENGTH_MAX = 4 << 20
TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
TYPE_DATA = 0x3
FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4

MUX_HEADER = struct.Struct(">II")
PLUGIN_CONN = 1
RUNTIME_CONN = 2
MUX_CHUNK_MAX = HEADER.size + MESSAGE_LENGTH_MAX


class TtrpcError(RuntimeError):
    """The peer broke the framing (oversized or truncated message); the connection is unusable."""


@dataclass(frozen=True)
class Message:
    stream_id: int
    type: int
    flags: int
    payload: bytes


def encode_message(message: Message) -> bytes:
    """Header plus payload; TtrpcError when the payload is over ttrpc's 4 MiB limit."""
    if len(message.payload) > MESSAGE_LENGTH_MAX:
        raise TtrpcError(f"ttrpc message of {len(message.payload)} bytes is over {MESSAGE_LENGTH_MAX}")
    header = HEADER.pack(len(message.payload), message.stream_id, message.type, message.flags)
    return header + message.payload


class MessageReader:
    """Cuts ttrpc messages out of one connection's byte stream, fed in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while len(self._buffer) >= HEADER.size:
            length, stream_id, kind, flags = HEADER.unpack_from(self._buffer)
            if length > MESSAGE_LENGTH_MAX:
                raise TtrpcError(
                    f"peer announced a ttrpc message of {length} bytes (limit {MESSAGE_LENGTH_MAX})"
                )
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            out.append(Message(stream_id, kind, flags, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole message."""
        return len(self._buffer)


def encode_chunk(conn_id: int, data: bytes) -> bytes:
    """One multiplexer chunk: connection id, length, data."""
    if len(data) > MUX_CHUNK_MAX:
        raise TtrpcError(f"chunk of {len(data)} bytes is over the multiplexer's {MUX_CHUNK_MAX}")
    return MUX_HEADER.pack(conn_id, len(data)) + data


class ChunkReader:
    """Cuts multiplexer chunks out of the socket's byte stream: (connection id, data) pairs."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while len(self._buffer) >= MUX_HEADER.size:
            conn_id, length = MUX_HEADER.unpack_from(self._buffer)
            if length > MUX_CHUNK_MAX:
                raise TtrpcError(f"peer announced a chunk of {length} bytes (limit {MUX_CHUNK_MAX})")
            end = MUX_HEADER.size + length
            if len(self._buffer) < end:
                break
            out.append((conn_id, bytes(self._buffer[MUX_HEADER.size : end])))
            del self._buffer[:end]
        return out
