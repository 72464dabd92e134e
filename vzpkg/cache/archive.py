"""Pack a directory tree into a cache archive (.tar.zst) and unpack it safely.

GNU tar writes and extracts the tar stream because only it round-trips everything an OS tree
needs (numeric owners, setuid bits, security.capability, hard links); zstandard compresses and
decompresses in-process so that the archive is hashed and measured as it streams by.

A cache may come from a mirror, so unpacking never trusts it: every member is checked in a first
streaming pass (tarfile in ``r|`` mode) and GNU tar only runs once the whole archive has passed.
Both passes read through one file descriptor, so the file cannot be swapped between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

import zstandard

from vzpkg import run
from vzpkg.errors import ExitCode, VzError
from vzpkg.fsutil import atomic_write

log = logging.getLogger("vzpkg")

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK_SIZE = 1 << 20
PROGRESS_INTERVAL = 16 << 20
# Compressed input is fed to zstd in small slices: one call's output is held in memory whole,
# and a slice this size expands to at most ~32 MiB even for a hostile archive (RLE blocks).
FEED_SIZE = 1024

# tarfile reports a zero block (tar's end-of-archive marker) with this exception; typeshed
# does not list it.
_END_OF_ARCHIVE: type[tarfile.HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PackResult:
    sha256: str  # of the compressed archive bytes
    compressed_size: int
    uncompressed_size: int  # bytes of the tar stream
    members: int


@dataclass(frozen=True)
class UnpackResult:
    members: int
    uncompressed_size: int


def _corrupt(archive: Path, why: str) -> VzError:
    hint = "delete the cache and build or download it again"
    return VzError(f"{archive}: {why}", ExitCode.ARCHIVE, hint=hint)


def pack_argv(tar: str, root: Path, *, source_date_epoch: int, index_file: Path) -> list[str]:
    """GNU tar arguments for a reproducible tar stream of ``root`` on stdout.

    The verbose listing (one escaped line per member) goes to ``index_file`` so members can be
    counted without parsing the stream.
    """
    return [
        tar, "--create", "--file=-", f"--directory={root}", "--verbose",
        f"--index-file={index_file}", "--numeric-owner", "--sort=name", "--format=posix",
        "--xattrs", "--xattrs-include=*", f"--mtime=@{source_date_epoch}", "--clamp-mtime",
        # The default pax header name contains tar's PID; atime and ctime change on every run.
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--one-file-system", ".",
    ]  # fmt: skip


def unpack_argv(tar: str, target: Path) -> list[str]:
    return [
        tar, "--extract", "--file=-", f"--directory={target}", "--numeric-owner", "--same-owner",
        "--preserve-permissions", "--xattrs", "--xattrs-include=*",
        # trusted.* is the host's namespace (vzpkg's ownership marks, overlayfs's own
        # attributes): never taken from an archive, whatever it holds.
        "--xattrs-exclude=trusted.*", "--delay-directory-restore",
    ]  # fmt: skip


def pack_tree(
    root: Path,
    dest: Path,
    *,
    source_date_epoch: int,
    level: int = 3,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Pack directory ``root`` into ``dest`` (.tar.zst), which must not exist yet.

    The caller renames ``dest`` into place; on any failure ``dest`` is removed. ``threads=0``
    means one zstd worker per CPU; zstd's multithreaded output does not depend on the number of
    workers, so the same tree gives the same bytes on any machine.
    """
    tar = run.check_tool("tar", "to pack template caches")
    if not root.is_dir():
        raise VzError(f"{root} is not a directory", ExitCode.INVALID_ARGUMENT)
    workers = threads or os.cpu_count() or 1
    cctx = zstandard.ZstdCompressor(level=level, threads=workers, write_checksum=True)
    digest = hashlib.sha256()
    uncompressed = reported = 0
    with ExitStack() as stack:
        index = stack.enter_context(tempfile.NamedTemporaryFile(prefix="vzpkg-tar-index-"))
        errors = stack.enter_context(tempfile.TemporaryFile(prefix="vzpkg-tar-stderr-"))
        try:
            out = stack.enter_context(open(dest, "xb"))
        except FileExistsError:
            raise VzError(f"{dest} already exists", ExitCode.FAILURE) from None
        argv = pack_argv(
            tar, root, source_date_epoch=source_date_epoch, index_file=Path(index.name)
        )
        try:
            with run.spawn(argv, stdout=subprocess.PIPE, stderr=errors) as proc:
                assert proc.stdout is not None
                compressor = cctx.compressobj()
                try:
                    while chunk := proc.stdout.read(CHUNK_SIZE):
                        uncompressed += len(chunk)
                        data = compressor.compress(chunk)
                        digest.update(data)
                        out.write(data)
                        if progress is not None and uncompressed - reported >= PROGRESS_INTERVAL:
                            progress(reported := uncompressed)
                except BaseException:
                    proc.kill()
                    raise
            _raise_if_failed(argv, proc.returncode, errors)
            data = compressor.flush()
            digest.update(data)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            out.close()
            dest.unlink(missing_ok=True)
            raise
        if progress is not None:
            progress(uncompressed)
        members = sum(block.count(b"\n") for block in iter(lambda: index.read(CHUNK_SIZE), b""))
        return PackResult(sha256=digest.hexdigest(), compressed_size=out.tell(),
                          uncompressed_size=uncompressed, members=members)  # fmt: skip


def _raise_if_failed(
    argv: list[str], returncode: int, errors: IO[bytes], target: Path | None = None
) -> None:
    if returncode != 0:
        errors.seek(0)
        text = errors.read()
        message = run.failure_message(argv, returncode, text)
        if target is not None and b"No space left on device" in text:
            raise VzError(
                f"the filesystem of {target} is full: the cache does not fit\n{message}",
                ExitCode.SYSTEM,
                hint=f"free space there (df -h {target.parent}), or unpack elsewhere "
                "(VE_PRIVATE, --private)",
            )
        raise VzError(message, ExitCode.FAILURE)


class _ZstdReader(io.RawIOBase):
    """Decompress a zstd file (one or more frames) on demand.

    Unlike zstandard's stream_reader, an archive cut short inside a frame is an error rather than
    a quiet end of data. Also hashes the compressed bytes it reads.
    """

    def __init__(self, raw: IO[bytes], name: Path) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._frame_started = False
        self._input = b""
        self._input_pos = 0
        self._output = bytearray()
        self._done = False
        self.digest = hashlib.sha256()
        self.total = 0  # decompressed bytes handed out
        self.limit: int | None = None  # more than this is corrupt (a bomb stops here)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer)
        while not self._output and not self._done:
            self._decompress_some()
        size = min(len(view), len(self._output))
        view[:size] = self._output[:size]
        del self._output[:size]
        self.total += size
        if self.limit is not None and self.total > self.limit:
            raise _corrupt(self._name, f"it decompresses to more than the {self.limit} bytes "
                           "its manifest says")  # fmt: skip
        return size

    def _decompress_some(self) -> None:
        if self._input_pos >= len(self._input):
            self._input, self._input_pos = self._raw.read(CHUNK_SIZE), 0
            self.digest.update(self._input)
            if not self._input:
                if self._frame_started:
                    raise _corrupt(self._name, "truncated zstd stream")
                self._done = True
                return
        piece = self._input[self._input_pos : self._input_pos + FEED_SIZE]
        self._input_pos += len(piece)
        self._frame_started = True
        try:
            self._output += self._frame.decompress(piece)
            if self._frame.eof:
                # The rest of this slice belongs to the next frame.
                self._input_pos -= len(self._frame.unused_data)
                self._frame = self._dctx.decompressobj()
                self._frame_started = False
        except zstandard.ZstdError as e:
            raise _corrupt(self._name, f"corrupt zstd stream: {e}") from None


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose reader treats a bad header as corruption.

    tarfile quietly ends the archive at a garbled, truncated or missing header after the first;
    GNU tar would resynchronise and carry on, so what it extracts could differ from what was
    checked. Only a zero block may end the archive.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tar)
        except _END_OF_ARCHIVE:
            raise
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"bad tar header at byte {tar.offset}: {e}") from None


class _StreamTarFile(tarfile.TarFile):
    tarinfo = _StrictTarInfo
    members: list[tarfile.TarInfo]  # set in TarFile.__init__; typeshed does not list it


def _normalise(name: str, what: str) -> list[str]:
    """Split a member name into path components, refusing names that could leave the target."""
    if "\0" in name:
        raise ValueError(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise ValueError(f"{what} {name!r} is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what} {name!r} contains '..'")
    return parts


class _TreeModel:
    """What extraction would have created so far, so that each member is judged against it."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {"": "dir"}  # normalised path -> dir/file/symlink/fifo

    def _check_parents(self, name: str, parts: list[str]) -> None:
        for depth in range(1, len(parts)):
            kind = self.kinds.get("/".join(parts[:depth]))
            if kind == "symlink":
                raise ValueError(f"{name!r} leads through a symlink in the archive")
            if kind not in (None, "dir"):
                raise ValueError(f"{name!r} has a parent that is not a directory")

    def add(self, info: tarfile.TarInfo) -> None:
        if info.isdir():
            kind = "dir"
        elif info.isreg() or info.islnk():
            kind = "file"
        elif info.issym():
            kind = "symlink"
        elif info.isfifo():
            kind = "fifo"
        elif info.ischr() or info.isblk():
            raise ValueError(f"{info.name!r} is a device node")
        else:
            raise ValueError(f"{info.name!r} has unknown member type {info.type!r}")
        parts = _normalise(info.name, "member name")
        self._check_parents(info.name, parts)
        for key in info.pax_headers:
            if key.startswith("SCHILY.xattr.trusted."):
                raise ValueError(
                    f"{info.name!r} carries the extended attribute {key[len('SCHILY.xattr.') :]}"
                    " (trusted.* is the host's namespace)"
                )
        path = "/".join(parts)
        if info.islnk():
            target = _normalise(info.linkname, f"hard link target of {info.name!r}")
            self._check_parents(info.linkname, target)
            if self.kinds.get("/".join(target)) != "file":
                raise ValueError(
                    f"hard link {info.name!r} points to {info.linkname!r}, "
                    "which is not an earlier regular file"
                )
        elif info.issym() and "\0" in info.linkname:
            raise ValueError(f"symlink {info.name!r} has a target containing a NUL byte")
        previous = self.kinds.get(path)
        if previous == "dir" and kind != "dir":
            raise ValueError(f"{info.name!r} would replace a directory with a non-directory")
        if previous == "symlink" and kind == "dir":
            # GNU tar would keep the symlink and chmod/chown what it points to.
            raise ValueError(f"{info.name!r} would turn a symlink into a directory")
        for depth in range(1, len(parts)):
            self.kinds.setdefault("/".join(parts[:depth]), "dir")
        self.kinds[path] = kind


MAX_TRAILER = 1 << 20  # GNU tar pads to its record size (10 KiB by default)


def _check_stream(archive: Path, reader: _ZstdReader, max_size: int | None = None) -> int:
    """Check every member of the tar stream in ``reader``; return the number of members.
    ``max_size``: the most the stream may decompress to (a bomb stops there)."""
    model = _TreeModel()
    members = 0
    reader.limit = max_size
    try:
        with _StreamTarFile.open(fileobj=io.BufferedReader(reader, CHUNK_SIZE), mode="r|") as tar:
            while (info := tar.next()) is not None:
                model.add(info)
                members += 1
                tar.members.clear()  # stream mode keeps every TarInfo otherwise
            # tarfile stopped at a zero block. Anything after it must be zeros too (GNU tar
            # writes a second zero block and pads with zeros), or GNU tar might find members
            # that were never checked here.
            trailer = 0
            while block := tar.fileobj.read(CHUNK_SIZE):
                if block.count(0) != len(block):
                    raise ValueError("data after the end-of-archive marker")
                trailer += len(block)
                if trailer > MAX_TRAILER:
                    raise ValueError("more padding after the end-of-archive marker than tar writes")
            if trailer < tarfile.BLOCKSIZE:
                raise ValueError("truncated tar stream (end-of-archive marker incomplete)")
    except (tarfile.TarError, ValueError, EOFError) as e:
        raise _corrupt(archive, str(e)) from None
    return members


def validate_archive(archive: Path, max_size: int | None = None) -> int:
    """Check that ``archive`` is intact and safe to unpack; return its member count.
    ``max_size``: the most it may decompress to (what its manifest says, for a fetched one)."""
    with _open_archive(archive) as raw:
        return _check_stream(archive, _ZstdReader(raw, archive), max_size)


def _open_archive(archive: Path) -> io.BufferedReader:
    try:
        return open(archive, "rb")
    except OSError as e:
        raise VzError(f"cannot open {archive}: {e.strerror}", ExitCode.FAILURE) from None


def unpack_archive(
    archive: Path,
    target: Path,
    *,
    expected_sha256: str | None = None,
    userns_fd: int | None = None,
    validated: Path | None = None,
) -> UnpackResult:
    """Unpack a cache into ``target``, an existing empty directory.

    Nothing is written until the checksum (if given) and every member have been checked. If
    extraction itself fails, ``target`` may hold part of the tree; the caller removes it.
    With ``userns_fd`` tar runs as root of that user namespace: every file gets the VPS's
    shifted owner in the same pass (file capabilities and ACLs too, by the kernel), and tar
    itself has no power over anything the VPS's ids do not own.

    ``validated`` (a root-only directory) remembers archives checked in full: the same file,
    unchanged since (device, inode, size, mtime and ctime, which no write leaves as it was),
    with the same sha256, is unpacked without being checked again, by zstd and tar alone.
    """
    tar = run.check_tool("tar", "to unpack template caches")
    if not target.is_dir():
        raise VzError(f"{target} is not a directory", ExitCode.INVALID_ARGUMENT)
    if any(target.iterdir()):
        raise VzError(f"{target} is not empty", ExitCode.INVALID_ARGUMENT)
    with _open_archive(archive) as raw:
        before = os.fstat(raw.fileno())
        known = _validated(validated, expected_sha256, before)
        if known is not None:
            _extract_known(tar, raw, target, userns_fd)
            if _identity(os.fstat(raw.fileno())) != _identity(before):
                raise _corrupt(archive, "the archive changed while it was being unpacked")
            return known
        if expected_sha256 is not None:
            actual = hashlib.file_digest(raw, "sha256").hexdigest()
            if actual != expected_sha256.lower():
                raise _corrupt(archive, f"sha256 is {actual}, expected {expected_sha256}")
            raw.seek(0)
        checked = _ZstdReader(raw, archive)
        members = _check_stream(archive, checked)
        raw.seek(0)
        reader = _ZstdReader(raw, archive)
        _extract(tar, reader, target, userns_fd)
    if reader.digest.digest() != checked.digest.digest():
        raise _corrupt(archive, "the archive changed while it was being unpacked")
    result = UnpackResult(members=members, uncompressed_size=reader.total)
    if validated is not None and expected_sha256 is not None:
        _remember(validated, expected_sha256, before, result)
    return result


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _validated(
    directory: Path | None, sha256: str | None, st: os.stat_result
) -> UnpackResult | None:
    """What the full check of this very file found, if it was checked and is unchanged."""
    if directory is None or sha256 is None:
        return None
    try:
        data = json.loads((directory / sha256.lower()).read_bytes())
        if data["file"] != _identity(st):
            return None
        return UnpackResult(members=int(data["members"]), uncompressed_size=int(data["size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_validated(
    directory: Path, archive: Path, sha256: str, members: int, size: int
) -> None:
    """Record that ``archive`` (as it is now) was checked in full, as an unpack with
    ``validated=directory`` would: the caller validated these very bytes and moved them
    here, so the first unpack (an update, a VPS's tree) skips the check."""
    _remember(directory, sha256, archive.stat(), UnpackResult(members, size))


def _remember(directory: Path, sha256: str, st: os.stat_result, result: UnpackResult) -> None:
    record = {"file": _identity(st), "members": result.members, "size": result.uncompressed_size}
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_uid != os.geteuid() or directory.stat().st_mode & 0o022:
            return  # a directory others could write in vouches for nothing
        atomic_write(directory / sha256.lower(), json.dumps(record).encode(), 0o600)
    except OSError as e:
        log.debug("could not remember that %s was checked: %s", sha256, e)


def _extract_known(tar: str, raw: IO[bytes], target: Path, userns_fd: int | None) -> None:
    """zstd -d | tar -x of an archive checked before (see unpack_archive)."""
    zstd = run.check_tool("zstd", "to unpack template caches")
    argv = unpack_argv(tar, Path(".") if userns_fd is not None else target)
    with tempfile.TemporaryFile(prefix="vzpkg-tar-stderr-") as errors:
        with (
            run.spawn([zstd, "-dcq"], stdin=raw, stdout=subprocess.PIPE, stderr=errors) as unzstd,
            run.spawn(
                argv,
                stdin=unzstd.stdout,
                stderr=errors,
                cwd=target if userns_fd is not None else None,
                userns_fd=userns_fd,
            ) as proc,
        ):
            assert unzstd.stdout is not None
            unzstd.stdout.close()  # tar holds it now
        _raise_if_failed([zstd], unzstd.returncode, errors, target)
        _raise_if_failed(argv, proc.returncode, errors, target)


def _extract(tar: str, reader: _ZstdReader, target: Path, userns_fd: int | None) -> None:
    # In a VPS's user namespace tar could not reach ``target`` through its root-only parents:
    # it starts in it instead (the chdir happens as host root, before it enters).
    argv = unpack_argv(tar, Path(".") if userns_fd is not None else target)
    with tempfile.TemporaryFile(prefix="vzpkg-tar-stderr-") as errors:
        with run.spawn(
            argv,
            stdin=subprocess.PIPE,
            stderr=errors,
            cwd=target if userns_fd is not None else None,
            userns_fd=userns_fd,
        ) as proc:
            assert proc.stdin is not None
            stdin = proc.stdin
            try:
                while block := reader.read(CHUNK_SIZE):
                    stdin.write(block)
                stdin.close()
            except BrokenPipeError:
                # tar stopped reading: either it failed (its exit status says so) or it found
                # the end-of-archive marker and ignored the zero padding. Read the rest anyway
                # so the digest covers the whole file.
                with contextlib.suppress(BrokenPipeError):
                    stdin.close()
                while reader.read(CHUNK_SIZE):
                    pass
            except BaseException:
                proc.kill()
                raise
        _raise_if_failed(argv, proc.returncode, errors, target)
