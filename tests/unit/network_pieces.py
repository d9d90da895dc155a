"""A response body that arrives the way a network delivers it: in pieces, one per read.

Provider tests mount it on `responses` to feed an adapter's stream decoder
recorded bodies cut anywhere (7, 37, 4096 bytes, …).
"""
from __future__ import annotations

import io


class Pieces(io.RawIOBase):
    """A body that arrives in the given pieces (one per read); an exception in the list is raised there."""

    def __init__(self, pieces):
        self.pieces = list(pieces)

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self.pieces:
            return 0
        piece = self.pieces.pop(0)
        if isinstance(piece, BaseException):
            raise piece
        buffer[:len(piece)] = piece
        return len(piece)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def in_pieces(data: bytes, size: int) -> io.BufferedReader:
    """`data` as a body read `size` bytes at a time."""
    return io.BufferedReader(Pieces(split(data, size)))
