"""Unfinished rosbag2 recordings (a recorder killed mid-episode) -> complete, readable bags.

While recording, a bag is a folder without metadata.yaml whose MCAP file has no summary and no footer (or whose
sqlite3 file holds only committed transactions). `flush_bag`, called by gem_recorder every flush period, closes the
pending MCAP chunk and hands it to the OS (sqlite3: commits), so a kill -9 loses only what came after it.
`recover_recording` reads every complete record of such a file, stopping at the first cut or damaged one, writes the
messages into a new bag under a temporary name, renames it into place, and only then removes the original; a
recovery killed at any point leaves either the original or the finished bag, never neither, and is simply run again.
A running recorder holds a lock on its folder, so recovery never touches a live recording.

ROS-free (pure-Python rosbags): used by gem_recorder when it starts and by `gem_record recover`.
"""
from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter, decompress
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

STAGING_DIR = ".recording"           # out_dir/.recording/<name>: bags being written
INSTRUCTION_FILE = "instruction.txt"
RECOVERED_FILE = "recovered.txt"     # written into a recovered bag: where it came from and what was lost
_TMP, _DONE = ".recovering", ".done"   # staging suffixes: a recovery in progress, an original already recovered
MAGIC = b"\x89MCAP0\r\n"
_ALREADY = "recovered before"
_FOOTER, _SCHEMA, _CHANNEL, _MESSAGE, _CHUNK, _DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F


def flush_bag(writer: Writer) -> None:
    """Make everything written so far survive a kill -9 (rosbags 0.11 storage writers, see the module doc)."""
    storage = writer.storage
    if isinstance(storage, McapWriter):
        if storage.chunk.msgs:       # a chunk of schema/channel records only would have no time range
            storage.close_chunk()
        storage.bio.flush()
    elif isinstance(storage, Sqlite3Writer):
        storage.conn.commit()


@dataclass
class RecoverySummary:
    source: Path                              # the unfinished recording
    bag: Path | None = None                   # the complete bag written (None with `error`)
    messages: dict[str, int] = field(default_factory=dict)   # topic -> messages recovered
    start_ns: int = 0
    end_ns: int = 0                           # log time of the first / last recovered message
    lost_bytes: int = 0                       # bytes after the last complete record
    stopped: str = ""                         # why reading ended
    error: str = ""                           # why nothing was recovered (the source is left as it was)

    @property
    def total(self) -> int:
        return sum(self.messages.values())

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self.total else 0.0

    def report(self) -> str:
        if self.error:
            return f"NOT RECOVERED {self.source}: {self.error}"
        if self.stopped == _ALREADY:
            return f"{self.source}: recovered before into {self.bag}; the original is now removed"
        lost = f" ({self.lost_bytes} bytes from there on not recovered)" if self.lost_bytes else ""
        return (f"recovered {self.source} -> {self.bag}: {self.total} messages over {self.seconds:.2f} s "
                f"{self.messages}; {self.stopped}{lost}")


class _Scan:
    """What one storage file yields besides its messages: (topic, msgtype, definition, encoding) per channel id, and
    how reading ended."""

    def __init__(self):
        self.schemas: dict[int, tuple[str, str]] = {}          # id -> (name, definition)
        self.channels: dict[int, tuple[str, str, str, str]] = {}
        self.pos, self.complete, self.lost_bytes, self.stopped = 0, False, 0, "complete file"


def _string(buf, pos: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from("<I", buf, pos)
    if pos + 4 + size > len(buf):
        raise ValueError(f"a field of {size} bytes runs past its record")
    return bytes(buf[pos + 4:pos + 4 + size]), pos + 4 + size


def _records(buf, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(opcode, body start, body end) of each complete record in buf[pos:end]; stops before a cut one."""
    while pos + 9 <= end:
        op, (size,) = buf[pos], struct.unpack_from("<Q", buf, pos + 1)
        if pos + 9 + size > end:
            return
        yield op, pos + 9, pos + 9 + size
        pos += 9 + size


def _mcap_messages(scan: _Scan, buf, pos: int, end: int, top: bool) -> Iterator[tuple[int, int, bytes]]:
    """(channel id, log time ns, data) of the messages in buf[pos:end], chunks opened; top: scan.pos follows."""
    for op, start, stop in _records(buf, pos, end):
        if op == 0x00 or (op == _MESSAGE and stop - start < 22):     # 0x00 is never valid: e.g. a zero-filled tail
            raise ValueError(f"invalid record (opcode {op:#04x}, {stop - start} bytes)")
        if op == _SCHEMA:
            (sid,) = struct.unpack_from("<H", buf, start)
            name, p = _string(buf, start + 2)
            _, p = _string(buf, p)                                    # encoding: ros2msg | ros2idl
            definition, _ = _string(buf, p)
            scan.schemas[sid] = (name.decode(), definition.decode())
        elif op == _CHANNEL:
            cid, sid = struct.unpack_from("<HH", buf, start)
            topic, p = _string(buf, start + 4)
            encoding, _ = _string(buf, p)
            scan.channels[cid] = (topic.decode(), *scan.schemas.get(sid, ("", "")), encoding.decode())
        elif op == _MESSAGE:
            cid, _, log_ns = struct.unpack_from("<HIQ", buf, start)
            yield cid, log_ns, bytes(buf[start + 22:stop])
        elif op == _CHUNK and top:
            _, _, size, crc = struct.unpack_from("<QQQI", buf, start)
            compression, p = _string(buf, start + 28)
            (length,) = struct.unpack_from("<Q", buf, p)
            if p + 8 + length > stop:
                raise ValueError("chunk data runs past its record")
            data = decompress(bytes(buf[p + 8:p + 8 + length]), compression.decode(), size, crc)
            yield from _mcap_messages(scan, data, 0, len(data), top=False)
        elif op in (_DATA_END, _FOOTER) and top:
            scan.complete = True
            return
        if top:
            scan.pos = stop


def _scan_mcap(path: Path, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < len(MAGIC):
            scan.lost_bytes, scan.stopped = size, "file cut inside its magic" if size else "empty file"
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:8] != MAGIC:
                raise ValueError(f"{path}: not an MCAP file (starts with {buf[:8]!r})")
            scan.pos = 8
            try:
                yield from _mcap_messages(scan, buf, 8, size, top=True)
            except (struct.error, ValueError, UnicodeDecodeError, ReaderError) as exc:
                scan.stopped = f"damaged record at byte {scan.pos} ({exc})"
            else:
                if not scan.complete:
                    scan.stopped = (f"file cut inside the record at byte {scan.pos}" if scan.pos < size
                                    else "file ends after a complete record (no summary)")
                if scan.pos + 9 <= size and buf[scan.pos] == _CHUNK and not scan.complete:
                    yield from _cut_chunk(scan, buf, scan.pos)
            scan.lost_bytes = 0 if scan.complete else size - scan.pos


def _cut_chunk(scan: _Scan, buf, pos: int) -> Iterator[tuple[int, int, bytes]]:
    """The complete messages at the start of an uncompressed chunk the file ends inside (another writer's: gem_recorder
    writes a chunk in one piece)."""
    try:
        compression, p = _string(buf, pos + 9 + 28)
        if not compression and p + 8 <= len(buf):
            yield from _mcap_messages(scan, buf, p + 8, len(buf), top=False)
    except (struct.error, ValueError, UnicodeDecodeError):
        return


def _scan_sqlite(path: Path, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    """Committed rows of a db3 (its hot journal, if any, is rolled back on a copy: the original stays as it was)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        for src in (path, path.with_name(path.name + "-journal")):
            if src.exists():
                shutil.copyfile(src, copy.with_name(src.name))
        try:
            with contextlib.closing(sqlite3.connect(copy)) as db:
                defs = dict(db.execute("SELECT topic_type, encoded_message_definition FROM message_definitions"))
                for cid, topic, msgtype, encoding in db.execute(
                        "SELECT id, name, type, serialization_format FROM topics"):
                    scan.channels[cid] = (topic, msgtype, defs.get(msgtype, ""), encoding)
                yield from db.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id")
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}: not a readable sqlite3 bag ({exc})") from exc


def _add_connection(writer: Writer, store, topic: str, msgtype: str, msgdef: str, encoding: str):
    from rosbags.typesys import get_types_from_msg

    if not msgtype:
        raise ValueError(f"topic {topic} has no message type (its schema record was lost)")
    if msgtype not in store.types:   # a type this rosbags does not ship: learn it from the bag's own definition
        store.register(get_types_from_msg(msgdef, msgtype))
    if not msgdef:
        return writer.add_connection(topic, msgtype, typestore=store, serialization_format=encoding)
    return writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=store.hash_rihs01(msgtype),
                                 serialization_format=encoding)


def _copy_out(files: list[Path], tmp: Path, summary: RecoverySummary) -> None:
    """Every readable message of `files` (in order) into a new bag at `tmp`."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(getattr(Stores, "ROS2_KILTED", Stores.LATEST))
    plugin = StoragePlugin.MCAP if files[0].suffix == ".mcap" else StoragePlugin.SQLITE3
    writer, connections = Writer(tmp, version=9, storage_plugin=plugin), {}
    writer.open()
    try:
        for path in files:
            scan = _Scan()
            for cid, log_ns, data in (_scan_mcap if path.suffix == ".mcap" else _scan_sqlite)(path, scan):
                if cid not in scan.channels:
                    continue       # unreachable with rosbags' writer: a channel is written before its messages
                key = scan.channels[cid]
                if key not in connections:
                    try:
                        connections[key] = _add_connection(writer, store, *key)
                    except Exception as exc:     # noqa: BLE001 - rosbags' type parser raises several types
                        raise ValueError(f"{path}: {exc}") from exc
                writer.write(connections[key], log_ns, data)
                first = not summary.total
                summary.start_ns = log_ns if first else min(log_ns, summary.start_ns)
                summary.end_ns = log_ns if first else max(log_ns, summary.end_ns)
                summary.messages[key[0]] = summary.messages.get(key[0], 0) + 1
            summary.lost_bytes += scan.lost_bytes
            summary.stopped = scan.stopped
        writer.close()     # writes metadata.yaml last (temp name + rename): the bag is complete once it is there
    except BaseException:
        writer.abort()
        raise


def _lock(folder: Path) -> int | None:
    """An exclusive lock on the folder (None: a running recorder holds it); the OS drops it when its holder dies."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_recording(folder: Path) -> int:
    """Held by gem_recorder while it writes `folder`: recovery leaves a locked folder alone. Close the fd to free."""
    fd = _lock(folder)
    if fd is None:
        raise RuntimeError(f"{folder} is locked by another process")
    return fd


def recover_recording(source: Path | str, dest: Path | str | None = None) -> RecoverySummary:
    """An unfinished bag folder -> a complete bag at `dest` (default: out_dir/<name> for out_dir/.recording/<name>,
    else <name>_recovered beside it). The original is removed afterwards only when it sits in .recording/.

    Raises ValueError (naming the file) when nothing can be recovered; the original is then left untouched."""
    source = Path(source)
    source = source.parent if source.is_file() else source
    staged = source.parent.name == STAGING_DIR
    dest = Path(dest) if dest else (source.parent.parent / source.name if staged
                                    else source.with_name(source.name + "_recovered"))
    summary = RecoverySummary(source, dest)
    fd = _lock(source)
    if fd is None:
        summary.error, summary.bag = "in use by a running recorder", None
        return summary
    try:
        origin = f"{source.resolve()}\n"      # first line of RECOVERED_FILE
        if (dest / RECOVERED_FILE).is_file() and (dest / RECOVERED_FILE).read_text().startswith(origin):
            summary.stopped = _ALREADY         # killed after the rename, before the original was removed
        else:
            if dest.exists():
                raise ValueError(f"{dest} exists; not overwriting it with the recovery of {source}")
            files = sorted(p for p in source.iterdir() if p.suffix in (".mcap", ".db3"))
            if not files:
                raise ValueError(f"{source}: no .mcap or .db3 file to recover")
            # Written as <tmp_dir>/<dest name> (rosbags names the storage file after its folder), then renamed.
            tmp_dir = source.with_name(source.name + _TMP) if staged else dest.with_name(dest.name + _TMP)
            shutil.rmtree(tmp_dir, ignore_errors=True)    # a recovery killed before (we hold the source's lock)
            tmp_dir.mkdir()
            tmp = tmp_dir / dest.name
            try:
                _copy_out(files, tmp, summary)
                for extra in source.iterdir():            # instruction.txt and anything else that is not the data
                    if extra.is_file() and extra.suffix not in (".mcap", ".db3") and extra.name not in (
                            "metadata.yaml", RECOVERED_FILE) and not extra.name.endswith("-journal"):
                        shutil.copyfile(extra, tmp / extra.name)
                (tmp / RECOVERED_FILE).write_text(f"{origin}{summary.report()}\n")
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
            os.replace(tmp, dest)
            os.rmdir(tmp_dir)
        if staged:        # the rename makes the removal atomic for the next run; rmtree may then take its time
            done = source.with_name(source.name + _DONE)
            os.replace(source, done)
            shutil.rmtree(done)
    finally:
        os.close(fd)
    return summary


def recover_recordings(out_dir: Path | str) -> list[RecoverySummary]:
    """Recover every unfinished recording in out_dir/.recording (also cleans what a killed recovery left)."""
    staging = Path(out_dir) / STAGING_DIR
    summaries = []
    for entry in sorted(staging.iterdir()) if staging.is_dir() else []:
        if entry.name.endswith(_DONE):        # recovered; its removal was cut short
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.endswith(_TMP):       # cleaned by the recovery of its original, under its lock
            if not entry.with_name(entry.name[:-len(_TMP)]).exists():
                with contextlib.suppress(OSError):
                    entry.rmdir()             # left empty by a recovery killed after its rename
        elif entry.is_dir():
            try:
                summaries.append(recover_recording(entry))
            except (ValueError, OSError) as exc:
                summaries.append(RecoverySummary(entry, error=str(exc)))
    return summaries
