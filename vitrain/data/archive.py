"""Safe, once-only extraction of dataset archives (.zip, .tar, .tar.gz, ...)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ArchiveError(ValueError):
    """An archive is unreadable or holds a member that could escape the extraction folder."""


def is_archive(path: Path) -> bool:
    """True if ``path`` names a file with a supported archive suffix."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def default_cache_dir() -> Path:
    """Where archives are extracted: ``$VITRAIN_CACHE`` or ``~/.cache/vitrain``."""
    return Path(os.environ.get("VITRAIN_CACHE", Path.home() / ".cache" / "vitrain"))


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse absolute paths, drive letters and '..' components."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]) or ".." in posix.parts:
        raise ArchiveError(f"{archive}: refusing unsafe member path {name!r}")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{archive}: refusing symbolic link member {info.filename!r}")
        zf.extractall(dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_member_name(archive, member.name)
            if not (member.isfile() or member.isdir()):
                kind = "link" if (member.issym() or member.islnk()) else "special file"
                raise ArchiveError(f"{archive}: refusing {kind} member {member.name!r}")
        # the 'data' filter (Python 3.12, backported to 3.11.4/3.10.12) re-checks all of the above
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - old Pythons; members were checked above
            tf.extractall(dest, members=members)


def _remove_dead_extractions(cache_dir: Path, prefix: str) -> None:
    """Remove temporary folders that a killed extraction of this archive left behind.

    Their names are ``prefix`` (the archive's stem and this host), the process id of the
    extracting process and a random part; only folders whose process is gone are removed,
    so a concurrent extraction (another rank, another run) keeps its folder.
    """
    for folder in cache_dir.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, but not ours to signal
            pass


def extract_archive(archive: str | Path, cache_dir: Path | None = None) -> Path:
    """Extract ``archive`` once into the cache and return the extracted folder.

    The cache key is the archive's absolute path, size and modification time, so a
    changed archive is extracted again. Extraction goes to a temporary folder that is
    renamed into place, so an interrupted extraction never looks complete; the temporary
    folder of a killed extraction is removed by the next one.

    Raises:
        ArchiveError: the archive is corrupt or holds an absolute path, a '..' path, a
            link or a device file.
    """
    archive = Path(archive).resolve()
    cache_dir = Path(cache_dir or default_cache_dir()) / "archives"
    st = archive.stat()
    key = hashlib.sha256(f"{archive}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    target = cache_dir / f"{stem}-{key}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = f".{stem}-{socket.gethostname()}-"
    _remove_dead_extractions(cache_dir, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=cache_dir))
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        else:
            raise ArchiveError(f"{archive}: not a readable zip or tar archive")
        os.replace(tmp, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and target.is_dir():  # another process finished first
            return target
        raise ArchiveError(f"{archive}: cannot extract ({err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
