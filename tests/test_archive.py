"""Archives: extracted once, atomically, and never outside the cache folder."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import zipfile

import pytest

from vitrain.data.archive import ArchiveError, extract_archive
from vitrain.data.sources import load_data

from .conftest import write_class_folders


@pytest.mark.parametrize("fmt", ["zip", "tar", "gztar"])
def test_archive_of_a_wrapped_folder_is_descended_into(tmp_path, fmt):
    write_class_folders(tmp_path / "src" / "pets", per_class=6)
    archive = shutil.make_archive(str(tmp_path / "pets"), fmt, root_dir=tmp_path / "src")
    splits = load_data(archive, cache_dir=tmp_path / "cache")
    assert splits.classes == ["cat", "dog", "fox"]
    assert sum(splits.sizes().values()) == 18


def test_extraction_happens_once(tmp_path):
    write_class_folders(tmp_path / "src" / "pets", per_class=2)
    archive = shutil.make_archive(str(tmp_path / "pets"), "zip", root_dir=tmp_path / "src")
    first = extract_archive(archive, tmp_path / "cache")
    marker = first / "marker"
    marker.write_text("kept")
    assert extract_archive(archive, tmp_path / "cache") == first
    assert marker.exists()
    assert not [p for p in (tmp_path / "cache" / "archives").iterdir() if p.name.startswith(".")]


def _zip_with(tmp_path, name: str, data: bytes = b"x", symlink: bool = False):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize("member", ["../escape.png", "/etc/evil.png", "a/../../escape.png", "C:/evil.png"])
def test_zip_path_traversal_is_refused(tmp_path, member):
    with pytest.raises(ArchiveError, match="unsafe member path"):
        extract_archive(_zip_with(tmp_path, member), tmp_path / "cache")
    assert not (tmp_path / "escape.png").exists()
    assert not list((tmp_path / "cache" / "archives").iterdir())  # nothing half-extracted is left


def test_zip_symlink_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_archive(_zip_with(tmp_path, "link.png", b"/etc/passwd", symlink=True), tmp_path / "cache")


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b""):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def test_tar_traversal_link_and_device_are_refused(tmp_path):
    traversal = tarfile.TarInfo("../escape.png")
    traversal.size = 1
    with pytest.raises(ArchiveError, match="unsafe member path"):
        extract_archive(_tar_with(tmp_path, traversal, b"x"), tmp_path / "c1")
    link = tarfile.TarInfo("data/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ArchiveError, match="link member"):
        extract_archive(_tar_with(tmp_path, link), tmp_path / "c2")
    device = tarfile.TarInfo("data/dev")
    device.type = tarfile.CHRTYPE
    with pytest.raises(ArchiveError, match="special file"):
        extract_archive(_tar_with(tmp_path, device), tmp_path / "c3")
    assert not (tmp_path / "escape.png").exists()


def test_corrupt_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ArchiveError, match="broken.zip"):
        extract_archive(bad, tmp_path / "cache")


def test_an_interrupted_extraction_never_looks_complete(tmp_path, monkeypatch):
    write_class_folders(tmp_path / "src" / "pets", per_class=2)
    archive = shutil.make_archive(str(tmp_path / "pets"), "zip", root_dir=tmp_path / "src")
    real = zipfile.ZipFile.extractall

    def interrupted(self, path=None, members=None, pwd=None):
        self.extract(self.infolist()[0], path)  # part of the archive is out, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, tmp_path / "cache")
    assert list((tmp_path / "cache" / "archives").iterdir()) == []  # no folder, complete or partial
    monkeypatch.setattr(zipfile.ZipFile, "extractall", real)
    folder = extract_archive(archive, tmp_path / "cache")
    assert len(list(folder.rglob("*.png"))) == 6


def test_a_killed_extractions_folder_is_removed_by_the_next_one(tmp_path):
    # SIGKILL leaves the temporary folder; the next extraction removes it if its process is
    # gone, and leaves alone the folder of one still running (another rank, another run)
    write_class_folders(tmp_path / "src" / "pets", per_class=2)
    archive = shutil.make_archive(str(tmp_path / "pets"), "zip", root_dir=tmp_path / "src")
    cache = tmp_path / "cache" / "archives"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    killed = cache / f".pets-{host}-{dead.pid}-abc123"
    running = cache / f".pets-{host}-{os.getpid()}-def456"
    for folder in (killed, running):
        (folder / "pets").mkdir(parents=True)
    folder = extract_archive(archive, tmp_path / "cache")
    assert len(list(folder.rglob("*.png"))) == 6
    assert not killed.exists() and running.is_dir()
