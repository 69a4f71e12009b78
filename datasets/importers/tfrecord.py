"""TFRecord files and ``tf.train.Example`` messages without TensorFlow.

Framing of one record (little endian): ``uint64 length``, ``uint32 masked_crc32c(length bytes)``,
``length`` bytes of data, ``uint32 masked_crc32c(data)``, where
``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2^32).  Files may be GZIP
compressed (DeepMind's multi_object_datasets are); that is detected from the magic bytes.

An Example is protobuf: ``Example{Features features=1}``, ``Features{map<string,Feature>
feature=1}`` (map entries are messages ``{string key=1; Feature value=2}``),
``Feature{oneof: BytesList bytes_list=1; FloatList float_list=2; Int64List int64_list=3}``,
each list ``repeated value = 1`` (floats and ints normally packed).  The decoder below reads just
that.  DeepMind stores images as a BytesList with one single-byte string per pixel value, so
BytesLists have a vectorised fast path.

The crc32c checksum comes from ``google_crc32c`` (a dependency of zarr; C implementation).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from datasets.importers.base import ImportSourceError

_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One framed TFRecord (used by writers and tests)."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _open_maybe_gzip(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_records(path: str | Path, verify: bool = True) -> Iterator[bytes]:
    """Yield the data of each record; a damaged file raises ImportSourceError naming the record
    and byte offset."""
    path = Path(path)
    if not path.is_file():
        raise ImportSourceError(f"{path}: file not found")
    offset = 0
    number = 0
    try:
        with _open_maybe_gzip(path) as stream:
            while True:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise ImportSourceError(f"{path}: truncated record {number} at byte {offset}")
                length_bytes = header[:8]
                (length,) = struct.unpack("<Q", length_bytes)
                (length_crc,) = struct.unpack("<I", header[8:])
                if verify and masked_crc32c(length_bytes) != length_crc:
                    raise ImportSourceError(
                        f"{path}: record {number} at byte {offset}: length checksum mismatch "
                        "(not a TFRecord file, or corrupt)"
                    )
                data = stream.read(length)
                footer = stream.read(4)
                if len(data) < length or len(footer) < 4:
                    raise ImportSourceError(f"{path}: truncated record {number} at byte {offset}")
                if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                    raise ImportSourceError(f"{path}: record {number} at byte {offset}: data checksum mismatch (corrupt)")
                yield data
                offset += 16 + length
                number += 1
    except (OSError, EOFError, zlib.error) as exc:  # gzip errors (BadGzipFile is an OSError)
        raise ImportSourceError(f"{path}: cannot read record {number} at byte {offset}: {exc}") from None


# --- protobuf wire format --------------------------------------------------------------------


class ExampleDecodeError(ValueError):
    pass


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if position >= len(buffer):
            raise ExampleDecodeError("truncated varint")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ExampleDecodeError("varint too long")


def _fields(buffer: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for each field of a message; value is an int for
    varint/fixed types and a memoryview for length-delimited ones."""
    view = memoryview(buffer)
    position = 0
    end = len(buffer)
    while position < end:
        key, position = _varint(buffer, position)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
        elif wire_type == 1:
            if position + 8 > end:
                raise ExampleDecodeError("truncated fixed64")
            value = view[position:position + 8]
            position += 8
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            if position + length > end:
                raise ExampleDecodeError("truncated length-delimited field")
            value = view[position:position + length]
            position += length
        elif wire_type == 5:
            if position + 4 > end:
                raise ExampleDecodeError("truncated fixed32")
            value = view[position:position + 4]
            position += 4
        else:
            raise ExampleDecodeError(f"unsupported wire type {wire_type}")
        yield field_number, wire_type, value


def _bytes_list(buffer: memoryview) -> list[bytes] | np.ndarray:
    """BytesList values.  When every value is one byte (DeepMind's pixel encoding: tag 0x0a,
    length 1, byte), return them as a uint8 array without a Python loop."""
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size and raw.size % 3 == 0 and np.all(raw[0::3] == 0x0A) and np.all(raw[1::3] == 0x01):
        return raw[2::3].copy()
    values = []
    for field_number, wire_type, value in _fields(bytes(buffer)):
        if field_number == 1 and wire_type == 2:
            values.append(bytes(value))
    return values


def _float_list(buffer: memoryview) -> np.ndarray:
    chunks = []
    for field_number, wire_type, value in _fields(bytes(buffer)):
        if field_number != 1:
            continue
        if wire_type == 2:  # packed
            if len(value) % 4:
                raise ExampleDecodeError("packed float list length is not a multiple of 4")
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif wire_type == 5:
            chunks.append(np.frombuffer(value, dtype="<f4"))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _int64_list(buffer: memoryview) -> np.ndarray:
    values = []
    for field_number, wire_type, value in _fields(bytes(buffer)):
        if field_number != 1:
            continue
        if wire_type == 2:  # packed varints
            packed = bytes(value)
            position = 0
            while position < len(packed):
                number, position = _varint(packed, position)
                values.append(number)
        elif wire_type == 0:
            values.append(value)
    # Negative int64 values are encoded as 10-byte two's-complement varints.
    return np.array([v - (1 << 64) if v >= (1 << 63) else v for v in values], dtype=np.int64)


def parse_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Decode a serialised ``tf.train.Example`` into {feature name: values}: a uint8 array for
    single-byte BytesLists, a list of bytes for other BytesLists, float32 / int64 arrays for the
    numeric lists."""
    features: dict[str, list[bytes] | np.ndarray] = {}
    for field_number, wire_type, features_message in _fields(data):
        if field_number != 1 or wire_type != 2:
            continue
        for entry_number, entry_type, entry in _fields(bytes(features_message)):
            if entry_number != 1 or entry_type != 2:
                continue
            key = None
            feature = None
            for part_number, part_type, part in _fields(bytes(entry)):
                if part_number == 1 and part_type == 2:
                    key = bytes(part).decode("utf-8")
                elif part_number == 2 and part_type == 2:
                    feature = part
            if key is None:
                raise ExampleDecodeError("feature map entry without a key")
            value: list[bytes] | np.ndarray = np.zeros(0, np.float32)
            if feature is not None:
                for kind, kind_type, payload in _fields(bytes(feature)):
                    if kind_type != 2:
                        continue
                    if kind == 1:
                        value = _bytes_list(payload)
                    elif kind == 2:
                        value = _float_list(payload)
                    elif kind == 3:
                        value = _int64_list(payload)
            features[key] = value
    return features


# --- encoding (for tests and for writing small sample files) ---------------------------------


def _encode_varint(number: int) -> bytes:
    if number < 0:
        number += 1 << 64
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _encode_varint((field_number << 3) | 2) + _encode_varint(len(payload)) + payload


def encode_example(features: dict[str, object]) -> bytes:
    """Serialise a ``tf.train.Example``.  Values: ``bytes`` or a list of bytes -> BytesList;
    a uint8 array -> BytesList with one single-byte string per element (DeepMind's layout);
    a float array -> packed FloatList; an int array -> packed Int64List."""
    entries = b""
    for key, value in features.items():
        if isinstance(value, bytes):
            value = [value]
        if isinstance(value, list):
            body = b"".join(_length_delimited(1, item) for item in value)
            feature = _length_delimited(1, body)
        else:
            array = np.asarray(value)
            if array.dtype == np.uint8:
                flat = array.reshape(-1)
                body = np.empty(flat.size * 3, dtype=np.uint8)
                body[0::3], body[1::3], body[2::3] = 0x0A, 0x01, flat
                feature = _length_delimited(1, body.tobytes())
            elif np.issubdtype(array.dtype, np.floating):
                packed = _length_delimited(1, array.astype("<f4").reshape(-1).tobytes())
                feature = _length_delimited(2, packed)
            elif np.issubdtype(array.dtype, np.integer):
                varints = b"".join(_encode_varint(int(v)) for v in array.reshape(-1))
                feature = _length_delimited(3, _length_delimited(1, varints))
            else:
                raise TypeError(f"cannot encode {key}: {array.dtype}")
        entry = _length_delimited(1, key.encode("utf-8")) + _length_delimited(2, feature)
        entries += _length_delimited(1, entry)
    return _length_delimited(1, entries)


def write_records(path: str | Path, payloads: list[bytes], compress: bool = True) -> None:
    """Write framed records, GZIP-compressed like DeepMind's files when ``compress``."""
    framed = b"".join(encode_record(payload) for payload in payloads)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(framed)
    else:
        Path(path).write_bytes(framed)
