"""Hostile files built by the tests: zip bombs (honest and lying headers), archives with
very many members, truncated copies and random bytes.

The bombs are written without ever holding their inflated content: a raw deflate block
of 1 MiB of zeros ends with a full flush, which resets the compressor, so the same
~1 KB of compressed bytes repeated N times is a valid stream of N MiB of zeros. A 2 GiB
bomb is therefore a ~2 MB file, written in milliseconds; only its CRC (computed once
per size and cached) costs a pass over the zeros.
"""

from __future__ import annotations

import random
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MIB = 1 << 20
_ZEROS = bytes(MIB)


@lru_cache(maxsize=None)
def _zero_block() -> tuple[bytes, bytes]:
    """(one flushed block of 1 MiB of zeros, the bytes that end the stream)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block, compressor.flush()


@lru_cache(maxsize=None)
def _zeros_crc(mib: int, start: int = 0) -> int:
    """The CRC-32 of ``mib`` MiB of zeros following bytes whose CRC-32 is ``start``."""
    crc = start
    for _ in range(mib):
        crc = zlib.crc32(_ZEROS, crc)
    return crc


@dataclass
class Member:
    """One zip member as it will be written. ``data`` is the stored payload, or with
    ``zero_mib`` set, the member is ``data`` then ``zero_mib`` MiB of zeros, deflated.
    ``declared`` is the uncompressed size written in both headers, when it should lie."""

    name: str
    data: bytes = b""
    zero_mib: int = 0
    declared: int | None = None

    def encoded(self) -> tuple[int, bytes, int, int]:
        """(method, bytes on disk, crc, true uncompressed size)."""
        if self.zero_mib:
            block, tail = _zero_block()
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            head = compressor.compress(self.data) + compressor.flush(zlib.Z_FULL_FLUSH) if self.data else b""
            crc = _zeros_crc(self.zero_mib, zlib.crc32(self.data))
            return zipfile.ZIP_DEFLATED, head + block * self.zero_mib + tail, crc, len(self.data) + self.zero_mib * MIB
        return zipfile.ZIP_STORED, self.data, zlib.crc32(self.data), len(self.data)


def write_zip(path: Path, members: list[Member]) -> Path:
    """A plain (not zip64) archive of ``members``, headers written by hand so that they
    can lie about sizes."""
    central, offset = [], 0
    with open(path, "wb") as out:
        for member in members:
            method, payload, crc, size = member.encoded()
            declared = size if member.declared is None else member.declared
            name = member.name.encode()
            fields = (20, 0, method, 0, 0x21, crc, len(payload), declared, len(name), 0)
            out.write(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *fields) + name)
            out.write(payload)
            central.append(b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, *fields, 0, 0, 0, 0, offset) + name)
            offset += 30 + len(name) + len(payload)
        directory = b"".join(central)
        out.write(directory)
        count = min(len(members), 0xFFFF)  # readers walk the directory by its size, not this count
        out.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(directory), offset, 0))
    return path


def members_of(archive: Path) -> list[Member]:
    """The members of a real archive, to be rewritten with some of them replaced."""
    with zipfile.ZipFile(archive) as zf:
        return [Member(info.filename, zf.read(info)) for info in zf.infolist()]


def with_bomb(source: Path, target: Path, member_suffix: str, mib: int, declared: int | None = None,
              keep_content: bool = False) -> Path:
    """``source`` with the member ending in ``member_suffix`` replaced by ``mib`` MiB of
    deflated zeros (after its own content, with ``keep_content``, so that the member
    still starts as a valid file); ``declared`` makes its headers claim that many bytes."""
    members = members_of(source)
    hits = [m for m in members if m.name.endswith(member_suffix)]
    assert len(hits) == 1, (member_suffix, [m.name for m in members])
    hits[0].data = hits[0].data if keep_content else b""
    hits[0].zero_mib, hits[0].declared = mib, declared
    return write_zip(target, members)


def with_member(source: Path, target: Path, member_suffix: str, data: bytes) -> Path:
    """``source`` with the member ending in ``member_suffix`` holding ``data`` instead."""
    members = members_of(source)
    hits = [m for m in members if m.name.endswith(member_suffix)]
    assert len(hits) == 1, (member_suffix, [m.name for m in members])
    hits[0].data = data
    return write_zip(target, members)


def many_members(path: Path, count: int, names=lambda i: f"m/{i}", head: list[Member] = ()) -> Path:
    """An archive of ``head`` then ``count`` empty members named ``names(i)``."""
    return write_zip(path, [*head, *(Member(names(i)) for i in range(count))])


def cut_points(size: int, count: int = 30) -> list[int]:
    """``count`` evenly spaced lengths in ``[0, size)``: from the empty file to all but the last byte."""
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)})


def truncations(source: Path, folder: Path, count: int = 30) -> list[Path]:
    """Copies of ``source`` cut at :func:`cut_points`, keeping its suffix."""
    data = source.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for cut in cut_points(len(data), count):
        path = folder / f"cut{cut:09d}{source.suffix}"
        path.write_bytes(data[:cut])
        paths.append(path)
    return paths


def random_bytes(folder: Path, suffix: str, seeds=range(5), size: int = 4096) -> list[Path]:
    """Random content under ``suffix``: plain noise, and noise behind each magic number a
    reader may sniff (zip, HDF5, pickle), so that the noise reaches the parsers."""
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = {"noise": b"", "zip": b"PK\x03\x04", "hdf5": b"\x89HDF\r\n\x1a\n", "pickle": b"\x80\x02"}
    paths = []
    for seed in seeds:
        rng = random.Random(seed)
        for label, prefix in prefixes.items():
            path = folder / f"{label}-{seed}{suffix}"
            path.write_bytes(prefix + rng.randbytes(size))
            paths.append(path)
    return paths


def lint_each(paths: list[Path], timeout: float = 120, max_mib: float = 1500) -> dict[str, str | None]:
    """Lint a whole corpus in one bounded child (``--format json``, so that each file's
    outcome is known) and check that every file was handled the way
    :func:`~tests.hostile.harness.assert_handled` demands of one: a lint, or one
    ``pwlint: error: PATH: ...`` line of its own on stderr; no traceback, no internal
    error, peak memory under ``max_mib``. Returns each path's error (None if linted)."""
    import json

    from tests.hostile.harness import run_bounded

    run = run_bounded("check", "--format", "json", *paths, timeout=timeout)
    assert "Traceback" not in run.err + run.out, run.err[-3000:]
    assert "internal error" not in run.err, run.err[-3000:]
    assert run.peak_mib < max_mib, f"peak memory {run.peak_mib:.0f} MiB"
    errors = {entry["path"]: entry["error"] for entry in json.loads(run.out)["files"]}
    assert sorted(errors) == sorted(map(str, paths))
    failed = [error for error in errors.values() if error]
    assert run.err.splitlines() == [f"pwlint: error: {error}" for error in failed], run.err[-3000:]
    for path, error in errors.items():
        assert error is None or error.startswith(f"{path}: "), error
    assert run.code == 2 if failed else run.code in (0, 1), run.code
    return errors
