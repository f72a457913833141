"""Columnar Avro binary encoding: a whole batch of records to a list of byte strings with numpy.

Pure and schema-agnostic: a record is a sequence of *pieces*, each an ``(n, width)`` byte matrix with a
per-row length (the row's first ``length`` bytes are its bytes for that piece). Avro's variable-length
parts (zig-zag varints, strings, map entries left out for missing readings) are pieces with varying
lengths. Rows sharing the same lengths are laid out as one fixed-width matrix and cut into ``bytes`` by
numpy itself, so the cost per record is a few hundred nanoseconds instead of a Python-level writer call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# zig-zag values from which a varint needs 2, 3, ... 10 bytes
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


@dataclass(frozen=True)
class Piece:
    """One field's (or part of a field's) bytes for every row.

    Attributes:
        matrix: ``(n, width)`` or ``(1, width)`` (same bytes for every row) uint8, or a 1-D column of a
            fixed-size little-endian dtype (``<f8`` for Avro doubles) written as is.
        lengths: ``(n,)`` int64 bytes used per row, or ``None`` when every row uses the whole width.
    """

    matrix: np.ndarray
    lengths: np.ndarray | None = None

    @property
    def width(self) -> int:
        return int(self.matrix.shape[1]) if self.matrix.ndim == 2 else self.matrix.dtype.itemsize

    @property
    def is_constant(self) -> bool:
        return self.matrix.ndim == 2 and self.matrix.shape[0] == 1


def _piece(matrix: np.ndarray, lengths: np.ndarray) -> Piece:
    """A piece whose lengths are dropped (and matrix narrowed) when every row uses the same length."""
    if len(lengths) and (lengths == lengths[0]).all():
        return Piece(matrix[:, : int(lengths[0])])
    return Piece(matrix, lengths.astype(np.int64, copy=False))


def constant(data: bytes) -> Piece:
    """The same bytes in every row."""
    return Piece(np.frombuffer(data, dtype=np.uint8).reshape(1, len(data)))


def zigzag_varints(numbers: np.ndarray) -> Piece:
    """Avro ``int``/``long`` encoding (zig-zag, then base-128 varint) of an int64 column."""
    numbers = np.asarray(numbers, dtype=np.int64)
    zigzag = (numbers.astype(np.uint64) << np.uint64(1)) ^ (numbers >> np.int64(63)).astype(np.uint64)
    lengths = 1 + np.searchsorted(_VARINT_LIMITS, zigzag, side="right").astype(np.int64)
    width = int(lengths.max()) if len(numbers) else 1
    matrix = np.empty((len(numbers), width), dtype=np.uint8)
    for j in range(width):
        # 7 bits per byte, low group first; the high bit says another byte follows.
        group = (zigzag >> np.uint64(7 * j)).astype(np.uint8) & np.uint8(0x7F)
        matrix[:, j] = group | ((lengths > j + 1).view(np.uint8) << np.uint8(7))
    return _piece(matrix, lengths)


def avro_string(text: str) -> bytes:
    """Avro ``string`` encoding of one string: its UTF-8 length as a varint, then the bytes."""
    data = text.encode()
    return varint_bytes(len(data)) + data


def varint_bytes(number: int) -> bytes:
    """Avro zig-zag varint of one integer."""
    zigzag = (number << 1) ^ (number >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def strings(column: np.ndarray) -> Piece:
    """Avro ``string`` encoding of an object column of str, each distinct value encoded once."""
    codes, distinct = pd.factorize(column, use_na_sentinel=False)
    encoded = [avro_string(str(text)) for text in distinct]
    return _table_piece(encoded, codes)


def _table_piece(encoded: list[bytes], codes: np.ndarray) -> Piece:
    """Rows that each pick one of a few byte strings (by ``codes``)."""
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    width = int(lengths.max()) if len(encoded) else 0
    table = np.zeros((max(len(encoded), 1), max(width, 1)), dtype=np.uint8)
    for i, data in enumerate(encoded):
        table[i, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    if len(encoded) == 1:
        return Piece(table[:, :width])
    return _piece(table[codes, :width], lengths[codes])


def doubles(column: np.ndarray) -> Piece:
    """Avro ``double`` encoding (8 bytes, little-endian IEEE 754) of a float column."""
    return Piece(np.asarray(column, dtype="<f8"))


def double_map(names: tuple[str, ...], values: np.ndarray) -> list[Piece]:
    """Avro ``map<double>`` of an ``(n, C)`` matrix, one entry per channel, NaN entries left out.

    One block holding every present entry, then the end-of-map 0; a row without entries is just the 0.
    """
    n = len(values)
    present = ~np.isnan(values)
    counts = present.sum(axis=1)
    count_piece = zigzag_varints(counts)
    if not present.all():
        count_piece = _piece(count_piece.matrix, np.where(counts > 0, _lengths(count_piece, n), 0))
    pieces = [count_piece]
    for j, name in enumerate(names):
        key = constant(avro_string(name))
        if present[:, j].all():
            pieces += [key, doubles(values[:, j])]
        else:
            reading = np.ascontiguousarray(values[:, j], dtype="<f8").view(np.uint8).reshape(n, 8)
            entry = np.concatenate([np.broadcast_to(key.matrix, (n, key.width)), reading], axis=1)
            pieces.append(_piece(entry, np.where(present[:, j], key.width + 8, 0)))
    pieces.append(constant(b"\x00"))
    return pieces


def optional_ints(column: np.ndarray, missing: np.ndarray) -> list[Piece]:
    """Avro ``["null", "int"]``: branch 0 where ``missing``, else branch 1 and the varint."""
    branch = Piece(np.where(missing, 0, 2).astype(np.uint8).reshape(-1, 1))
    number = zigzag_varints(np.where(missing, 0, column))
    return [branch, _piece(number.matrix, np.where(missing, 0, _lengths(number, len(column))))]


def _lengths(piece: Piece, n: int) -> np.ndarray:
    return piece.lengths if piece.lengths is not None else np.full(n, piece.width, dtype=np.int64)


def join_rows(pieces: list[Piece], n: int) -> list[bytes]:
    """Each row's pieces concatenated, as ``n`` byte strings in row order.

    Rows are grouped by their pieces' lengths; each group becomes one fixed-width uint8 matrix that numpy
    turns into ``bytes`` objects in C (a void dtype view, which keeps trailing zero bytes).
    """
    if n == 0:
        return []
    varying = [i for i, piece in enumerate(pieces) if piece.lengths is not None]
    if not varying:
        return _fixed_rows(pieces, None, n)
    layouts, group = np.unique(_layout_keys([pieces[i] for i in varying], n), return_inverse=True)
    group = group.ravel()
    if len(layouts) == 1:
        return _fixed_rows(pieces, None, n)
    rows = np.empty(n, dtype=object)
    order = np.argsort(group, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(group, minlength=len(layouts)))]
    for g in range(len(layouts)):
        index = order[bounds[g] : bounds[g + 1]]
        rows[index] = _fixed_rows(pieces, index, len(index))
    return rows.tolist()  # type: ignore[no-any-return]


def _layout_keys(varying: list[Piece], n: int) -> np.ndarray:
    """One integer per row that differs exactly when the rows' piece lengths differ."""
    if np.prod([float(piece.width + 1) for piece in varying]) < 2.0**62:
        key = np.zeros(n, dtype=np.int64)
        for piece in varying:
            key = key * (piece.width + 1) + _lengths(piece, n)
        return key
    # Too many combinations for one integer (many channels with scattered NaNs): number distinct rows.
    signature = np.stack([_lengths(piece, n) for piece in varying], axis=1)
    return np.unique(signature, axis=0, return_inverse=True)[1].ravel()


def _fixed_rows(pieces: list[Piece], index: np.ndarray | None, n: int) -> list[bytes]:
    """Rows (all, or those at ``index``) whose pieces all have the same lengths, as bytes.

    Constant pieces go into a row template repeated ``n`` times; each other piece is then written into its
    column range through a strided view, one numpy copy per piece rather than per row.
    """
    first = 0 if index is None else int(index[0])
    template = bytearray()
    placed: list[tuple[int, Piece, int]] = []
    for piece in pieces:
        length = piece.width if piece.lengths is None else int(piece.lengths[first])
        if length == 0:
            continue
        if piece.is_constant:
            template += piece.matrix[0, :length].tobytes()
        else:
            placed.append((len(template), piece, length))
            template += bytes(length)
    width = len(template)
    rows = np.frombuffer(template * n, dtype=np.uint8)
    for offset, piece, length in placed:
        data = piece.matrix if index is None else piece.matrix[index]
        if data.ndim == 1:
            np.ndarray((n,), dtype=data.dtype, buffer=rows, offset=offset, strides=(width,))[...] = data
        else:
            target = np.ndarray((n, length), dtype=np.uint8, buffer=rows, offset=offset, strides=(width, 1))
            target[...] = data[:, :length]
    return rows.view(f"V{width}").tolist()  # type: ignore[no-any-return]


# --- reading: the same idea backwards, over all messages at once -------------------------------------------

PADDING = 16  # zero bytes after the last message, so reads a few bytes past a message's end stay in bounds


def concatenate(values: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All values in one zero-padded uint8 buffer (a missing value is empty), with their starts and ends."""
    if None in values:
        values = [b"" if v is None else v for v in values]
    lengths = np.array(list(map(len, values)), dtype=np.int64)  # type: ignore[arg-type]
    end = np.cumsum(lengths)
    joined = b"".join(values) + bytes(PADDING)  # type: ignore[arg-type]
    return np.frombuffer(joined, dtype=np.uint8), end - lengths, end


@dataclass
class Cursor:
    """Read positions into one buffer holding many Avro bodies, one position per message.

    Attributes:
        buffer: every message's bytes, concatenated and followed by ``PADDING`` zero bytes (uint8).
        position: ``(n,)`` where each message's next field starts.
        end: ``(n,)`` one past each message's last byte.
        ok: ``(n,)`` messages still readable; a message that breaks a rule is dropped here (and
            re-read one by one elsewhere, to say precisely what is wrong with it).
    """

    buffer: np.ndarray
    position: np.ndarray
    end: np.ndarray
    ok: np.ndarray

    def __post_init__(self) -> None:
        # a float64 starting at every byte offset: reading a double is one gather, aligned or not
        self._doubles = np.ndarray((len(self.buffer) - 7,), dtype="<f8", buffer=self.buffer, strides=(1,))
        self._words = np.ndarray((len(self.buffer) - 7,), dtype="<u8", buffer=self.buffer, strides=(1,))

    def _words_at(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """``(n, words)`` little-endian uint64 words of byte strings, zeroed past each string's length."""
        count = max(1, -(-int(lengths.max()) // 8))
        words = np.empty((len(starts), count), dtype=np.uint64)
        for j in range(count):
            left = np.clip(lengths - 8 * j, 0, 8).astype(np.uint64)
            all_bits = np.uint64(0xFFFFFFFFFFFFFFFF)
            keep = np.where(left == 8, all_bits, (np.uint64(1) << (left * np.uint64(8))) - np.uint64(1))
            offsets = np.minimum(starts + 8 * j, len(self._words) - 1)
            words[:, j] = self._words[offsets] & keep
        return words

    def varints(self, active: np.ndarray | None = None) -> np.ndarray:
        """Read one zig-zag varint (Avro int/long) for each active message and advance past it."""
        active = self.ok if active is None else active & self.ok
        value = np.zeros(len(self.position), dtype=np.uint64)
        length = np.zeros(len(self.position), dtype=np.int64)
        more = active.copy()
        for k in range(10):
            offsets = self.position + k
            inside = more & (offsets < self.end)
            self.ok &= ~(more & ~inside)  # ran off the end of the message
            byte = self.buffer[offsets].astype(np.uint64)
            value |= np.where(inside, (byte & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
            length += inside
            more = inside & (byte >= 0x80)
            if not more.any():
                break
        self.ok &= ~more  # longer than any 64-bit varint
        self.position = self.position + length
        return ((value >> np.uint64(1)).astype(np.int64)) ^ -((value & np.uint64(1)).astype(np.int64))

    def doubles(self, active: np.ndarray) -> np.ndarray:
        """Read one 8-byte little-endian double for each active message and advance past it."""
        active = active & self.ok
        self.ok &= ~(active & (self.position + 8 > self.end))
        active &= self.ok
        readings = self._doubles[self.position]
        self.position = self.position + np.where(active, 8, 0)
        return readings

    def strings(self, active: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Read one Avro string per active message, each distinct string decoded once.

        Returns:
            ``(codes, distinct)``: per message an index into ``distinct`` (-1 for inactive or broken ones).
        """
        active = self.ok if active is None else active & self.ok
        length = self.varints(active)
        active &= self.ok
        self.ok &= ~(active & ((length < 0) | (self.position + length > self.end)))
        active &= self.ok
        codes = np.full(len(self.position), -1, dtype=np.int64)
        rows = np.flatnonzero(active)
        if len(rows) == 0:
            return codes, []
        lengths = length[rows]
        words = self._words_at(self.position[rows], lengths)
        inverse, first = _factorize_rows(words, lengths)
        decoded: list[str] = []
        unreadable = np.zeros(len(first), dtype=bool)
        for j, row in enumerate(first.tolist()):
            try:
                decoded.append(words[row].astype("<u8").tobytes()[: lengths[row]].decode())
            except UnicodeDecodeError:
                decoded.append("")
                unreadable[j] = True
        codes[rows] = inverse
        self.ok[rows[unreadable[inverse]]] = False
        self.position = self.position + np.where(active, length, 0)
        return codes, decoded


def _factorize_rows(words: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number distinct byte strings given as zero-padded uint64 words and lengths.

    Returns ``(code per row, first row of each code)``. Rows are hashed to one integer and factorised in a
    hash table; the hash is then checked word for word, and a collision falls back to sorting the rows.
    """
    digest = lengths.astype(np.uint64)
    for column in range(words.shape[1]):
        digest = (digest ^ words[:, column]) * np.uint64(0x100000001B3)  # FNV-style mixing, wraps mod 2**64
    codes, distinct = pd.factorize(digest)
    first = np.full(len(distinct), len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    if (words == words[first[codes]]).all() and (lengths == lengths[first[codes]]).all():
        return codes.astype(np.int64), first
    keyed = np.ascontiguousarray(np.concatenate([words, lengths.astype(np.uint64)[:, None]], axis=1))
    _, first, inverse = np.unique(keyed.view(f"V{keyed.shape[1] * 8}").ravel(), return_index=True,
                                  return_inverse=True)
    return inverse.ravel().astype(np.int64), first
