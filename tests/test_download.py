"""The default source: download over HTTP (a local server), checksum, reading the archive safely, clear errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from conftest import write_imdb_archive
from stacked_rnn.tasks.imdb import IMDBDataModule
from stacked_rnn.tasks.imdb_corpus import DataError, download, read_archive


@pytest.fixture()
def served(tmp_path):
    """A tiny archive served by http.server on 127.0.0.1; yields (url, sha256)."""
    root = tmp_path / "www"
    root.mkdir()
    archive = write_imdb_archive(root / "aclImdb_v1.tar.gz", per_class=30)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/aclImdb_v1.tar.gz", hashlib.sha256(archive.read_bytes()).hexdigest()
    server.shutdown()


def test_default_source_downloads_verifies_and_reads(served, tmp_path):
    url, sha = served
    dm = IMDBDataModule(url=url, sha256=sha, cache_dir=str(tmp_path / "cache"), val_size=10, progress=False)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 50, "val": 10, "test": 60}
    downloaded = tmp_path / "cache" / "downloads" / "aclImdb_v1.tar.gz"
    assert downloaded.is_file() and not downloaded.with_name("aclImdb_v1.tar.gz.part").exists()
    assert not (tmp_path / "cache" / "extracted").exists()  # read from the archive, never unpacked


def test_checksum_mismatch_is_a_clear_error_and_leaves_no_file(served, tmp_path):
    url, _ = served
    dest = tmp_path / "dl" / "aclImdb_v1.tar.gz"
    with pytest.raises(DataError, match="checksum mismatch.*expected sha256 0000"):
        download(url, dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_stale_partial_file_is_replaced(served, tmp_path):
    url, sha = served
    dest = tmp_path / "aclImdb_v1.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(b"garbage from an interrupted run")
    download(url, dest, sha256=sha, progress=False)  # http.server ignores Range: the download restarts
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha


def test_unreachable_host_says_how_to_provide_the_data(tmp_path):
    dm = IMDBDataModule(url="http://127.0.0.1:9/aclImdb_v1.tar.gz", cache_dir=str(tmp_path), progress=False)
    with pytest.raises(DataError, match=r"cannot download .*data\.archive=.*data\.root="):
        dm.prepare_data()


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "aclImdb/../../escape.txt"])
def test_members_outside_the_layout_are_ignored_and_nothing_is_written(tmp_path, name, monkeypatch):
    info = tarfile.TarInfo(name)
    info.size = 3
    archive = write_imdb_archive(tmp_path / "evil.tar.gz", per_class=2, extra_members=[(info, b"bad")])
    monkeypatch.chdir(tmp_path / "..")
    reviews = read_archive(archive)
    assert len(reviews) == 10 and all(name.startswith("aclImdb/") and ".." not in name for name in reviews)  # 8 + urls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]
    assert not (tmp_path.parent / "escape.txt").exists()


def test_links_are_not_followed(tmp_path):
    link = tarfile.TarInfo("aclImdb/train/pos/link.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("aclImdb/train/neg/hard.txt")
    hard.type, hard.linkname = tarfile.LNKTYPE, "aclImdb/train/pos/0_8.txt"
    archive = write_imdb_archive(tmp_path / "evil.tar.gz", per_class=2, extra_members=[(link, None), (hard, None)])
    reviews = read_archive(archive)
    assert "aclImdb/train/pos/link.txt" not in reviews and "aclImdb/train/neg/hard.txt" not in reviews
    assert len(reviews) == 10  # 8 reviews and train/urls_{pos,neg}.txt


def test_corrupt_and_truncated_archives_give_clear_errors(tmp_path):
    good = write_imdb_archive(tmp_path / "good.tar.gz", per_class=20).read_bytes()
    (tmp_path / "truncated.tar.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.tar.gz").write_bytes(b"this is not a gzip file" * 10)
    for name in ("truncated.tar.gz", "noise.tar.gz"):
        with pytest.raises(DataError, match="corrupt or truncated"):
            read_archive(tmp_path / name)


def test_archive_without_the_layout_is_rejected(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("reviews/train/pos/1_9.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"good"))
    with pytest.raises(DataError, match="does not have the aclImdb layout: missing or empty aclImdb/train/pos"):
        read_archive(archive)


def test_local_folder_source_gives_the_same_data_as_the_archive(tiny_archive, tmp_path):
    with tarfile.open(tiny_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "aclImdb").rename(tmp_path / "y" / "my_reviews")  # any folder name, pointed at directly
    loaded = {}
    for source in (dict(root=str(tmp_path / "y" / "my_reviews")), dict(archive=str(tiny_archive))):
        dm = IMDBDataModule(**source, cache_dir=str(tmp_path / "cache"), val_size=20, progress=False)
        dm.prepare_data()
        dm.setup()
        loaded[next(iter(source))] = (dm.vocab, [s.tolist() for s in dm.datasets["test"].sequences])
    assert len(loaded["root"][1]) == 120
    assert loaded["root"] == loaded["archive"]


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(DataError, match="data.archive=.*nope.tar.gz does not exist"):
        IMDBDataModule(archive=str(tmp_path / "nope.tar.gz"), cache_dir=str(tmp_path)).prepare_data()
    with pytest.raises(DataError, match="data.root=.*is not a folder"):
        IMDBDataModule(root=str(tmp_path / "nodir"), cache_dir=str(tmp_path)).prepare_data()


def serve_bytes(data: bytes, cut_first_at: int | None):
    """An HTTP server that honours Range and, if asked, breaks off its first full response after cut_first_at bytes.
    Returns (server, url, ranges): ranges lists the Range header of every request."""
    ranges = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked = self.headers.get("Range")
            ranges.append(asked)
            start = int(asked.split("=")[1].split("-")[0]) if asked else 0
            body = data[start:]
            self.send_response(206 if asked else 200)
            self.send_header("Content-Length", str(len(body)))
            if asked:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(body[:cut_first_at] if cut_first_at is not None and len(ranges) == 1 else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/aclImdb_v1.tar.gz", ranges


def test_interrupted_download_leaves_only_a_part_file_and_resumes(tmp_path):
    data = write_imdb_archive(tmp_path / "src.tar.gz", per_class=30).read_bytes()
    server, url, ranges = serve_bytes(data, cut_first_at=1000)
    dest = tmp_path / "dl" / "aclImdb_v1.tar.gz"
    part = dest.with_name(dest.name + ".part")
    try:
        with pytest.raises(DataError, match=rf"broke off after 1000 of {len(data)} bytes; run again to resume"):
            download(url, dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
        assert not dest.exists() and part.stat().st_size == 1000  # never a half file under the real name
        download(url, dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    finally:
        server.shutdown()
    assert ranges == [None, "bytes=1000-"]  # the second request asked only for the missing bytes
    assert dest.read_bytes() == data and not part.exists()
