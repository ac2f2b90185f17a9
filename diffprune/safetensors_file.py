"""Structural checks of a safetensors file before the library reads it.

The safetensors reader reports an empty, truncated or foreign file with its own terse
errors ("header too large", "incomplete metadata") that name neither the file nor what to
do. A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (each
tensor's dtype, shape and byte range) and the tensor data; checking those three against the
file's size says precisely what is wrong with it.
"""
from __future__ import annotations

import json
import os
import struct

# The safetensors reader refuses headers above 100 MB: a larger length is not a header.
MAX_HEADER_BYTES = 100 * 1000 * 1000
FIX = "copy the file again, or rerun the run that wrote it"


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What makes ``path`` unreadable as a safetensors file (a sentence naming it), or None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                if size == 0:
                    return f"{path} is empty (0 bytes), not a safetensors file: {FIX}"
                return (f"{path} is not a safetensors file, or is truncated: {size} bytes, fewer than the 8 "
                        f"of a safetensors header length: {FIX}")
            (header_bytes,) = struct.unpack("<Q", prefix)
            if header_bytes > MAX_HEADER_BYTES:
                return (f"{path} is not a safetensors file (its first 8 bytes {prefix.hex()} are not a "
                        "header length): pass a diff.safetensors written by diffprune")
            if 8 + header_bytes > size:
                return (f"{path} is truncated: its safetensors header announces {header_bytes} bytes, the file "
                        f"has {size - 8} after the length: {FIX}")
            raw_header = handle.read(header_bytes)
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error})"
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, ValueError):
        return f"{path} is not a safetensors file (its header is not JSON), or it is corrupted: {FIX}"
    if not isinstance(header, dict):
        return f"{path} is not a safetensors file (its header is not a JSON object): {FIX}"
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(x, int) for x in offsets)):
            return f"{path}: tensor {name!r} has no valid data_offsets in its safetensors header: {FIX}"
        data_end = max(data_end, offsets[1])
    available = size - 8 - header_bytes
    if data_end > available:
        return (f"{path} is truncated: its tensors need {data_end} bytes of data, the file holds {available}: {FIX}")
    return None


def first_difference(expected: str, actual: str) -> str:
    """Where two strings (e.g. fingerprints) first differ, with both sides around that point:
    two 64-hex-digit digests that differ in one digit print identically when truncated."""
    index = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    start = max(0, index - 6)
    return (f"they first differ at character {index + 1} of {max(len(expected), len(actual))}: "
            f"...{expected[start:index + 7]}... vs ...{actual[start:index + 7]}...")
