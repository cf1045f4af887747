"""`metaocl data download cvdb|trex`, the whole path, against an HTTP server this test starts on loopback.

The server speaks the two APIs the downloader reads (Dataverse's dataset JSON and file access;
figshare's article JSON and a file URL); the downloader is pointed at it with METAOCL_CVDB_URL /
METAOCL_TREX_URL. Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from metaocl.cli import main
from metaocl.data import download
from metaocl.data.errors import DataError

DATAVERSE_API = f"/api/datasets/:persistentId/?persistentId={download.CVDB_DOI}"
FIGSHARE_API = f"/v2/articles/{download.TREX_ARTICLE}"
FILE_ID = 4242
DATAFILE = f"/api/access/datafile/{FILE_ID}"
# 2.5 MiB: the downloader reads 1 MiB chunks, so this streams in three.
PAYLOAD = bytes(range(256)) * (10 * 1024)

# Published test vectors for b"abc" (RFC 1321, FIPS 180-2): independent of hashlib.
ABC = {
    "MD5": "900150983cd24fb0d6963f7d28e17f72",
    "SHA-1": "a9993e364706816aba3e25717850c26c9cd0d89d",
    "SHA-256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "SHA-512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
               "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
}


class Server:
    """Serves ``routes`` (path with query -> bytes, or a callable writing the response); logs requests."""

    def __init__(self):
        self.routes: dict[str, bytes | object] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                elif callable(body):
                    body(self)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def dataverse(self, body: bytes, checksum: dict | None = None, md5: str | None = None):
        """The CVDB record with one more file beside it, and the file's bytes."""
        df = {"id": FILE_ID, "filename": download.CVDB_FILE, "filesize": len(body)}
        if checksum is not None:
            df["checksum"] = checksum
        if md5 is not None:
            df["md5"] = md5
        other = {"id": 1, "filename": "codebook.pdf", "checksum": {"type": "MD5", "value": "0" * 32}}
        record = {"status": "OK", "data": {"latestVersion": {"files": [{"dataFile": other}, {"dataFile": df}]}}}
        self.routes[DATAVERSE_API] = json.dumps(record).encode()
        self.routes[DATAFILE] = body

    def figshare(self, archive: bytes, md5: str | None):
        sample = {"name": "sample.zip", "size": 10, "download_url": f"{self.url}/files/sample.zip", "computed_md5": "0" * 32}
        full = {"name": "TREx_json.zip", "size": len(archive), "download_url": f"{self.url}/files/trex.zip",
                "computed_md5": md5 or ""}
        self.routes[FIGSHARE_API] = json.dumps({"id": download.TREX_ARTICLE, "files": [sample, full]}).encode()
        self.routes["/files/trex.zip"] = archive

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch, tmp_path):
    s = Server()
    monkeypatch.setenv("METAOCL_CVDB_URL", s.url)
    monkeypatch.setenv("METAOCL_TREX_URL", s.url)
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "home"))
    yield s
    s.close()


def home() -> Path:
    return download.data_home()


def leftovers() -> list[str]:
    return sorted(str(p.relative_to(home())) for p in home().rglob("*") if p.is_file()) if home().exists() else []


# ------------------------------------------------------------------------------------------------
# CVDB (Dataverse)
# ------------------------------------------------------------------------------------------------
def test_cvdb_streams_into_part_then_renames_after_the_checksum(server):
    dest = home() / "cvdb" / download.CVDB_FILE
    part = dest.with_name(dest.name + ".part")
    seen = {}

    def slow_file(handler):  # send 1.5 MiB, look at the client's files, then send the rest
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PAYLOAD)))
        handler.end_headers()
        handler.wfile.write(PAYLOAD[: 3 << 19])
        handler.wfile.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (part.is_file() and part.stat().st_size >= 1 << 20):
            time.sleep(0.01)
        seen.update(part=part.is_file() and part.stat().st_size, dest=dest.exists())
        handler.wfile.write(PAYLOAD[3 << 19:])

    server.dataverse(PAYLOAD, checksum={"type": "SHA-256", "value": hashlib.sha256(PAYLOAD).hexdigest().upper()})
    server.routes[DATAFILE] = slow_file
    assert main(["data", "download", "cvdb"]) == 0
    assert seen == {"part": 1 << 20, "dest": False}  # mid-download: only the .part file, one chunk in it
    assert dest.read_bytes() == PAYLOAD
    assert leftovers() == [f"cvdb/{download.CVDB_FILE}"]
    assert server.requests == [DATAVERSE_API, DATAFILE]
    # present: not fetched again
    assert main(["data", "download", "cvdb"]) == 0 and len(server.requests) == 2


@pytest.mark.parametrize("kind", list(ABC))
def test_cvdb_verifies_by_the_declared_checksum_type(server, kind):
    server.dataverse(b"abc", checksum={"type": kind, "value": ABC[kind]})
    dest = download.download_cvdb(progress=False)
    assert dest.read_bytes() == b"abc"


@pytest.mark.parametrize("kind", ["MD5", "SHA-1", "SHA-256", "SHA-512"])
def test_cvdb_wrong_bytes_are_refused_and_nothing_is_left(server, kind, capsys):
    # the declared checksum is right for "abc" in every algorithm; the server sends "abd"
    server.dataverse(b"abd", checksum={"type": kind, "value": ABC[kind]})
    assert main(["data", "download", "cvdb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch" in err and ABC[kind] in err
    assert str(home() / "cvdb" / download.CVDB_FILE) in err  # says where to put it by hand
    assert leftovers() == []


def test_cvdb_a_file_already_there_survives_a_corrupted_forced_download(server):
    dest = home() / "cvdb" / download.CVDB_FILE
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"abc")
    server.dataverse(b"abd", checksum={"type": "MD5", "value": ABC["MD5"]})
    with pytest.raises(DataError, match="checksum mismatch"):
        download.download_cvdb(force=True, progress=False)
    assert dest.read_bytes() == b"abc" and leftovers() == [f"cvdb/{download.CVDB_FILE}"]


def test_cvdb_legacy_md5_field_is_used_when_no_checksum_object(server):
    server.dataverse(b"abc", md5=ABC["MD5"])
    assert download.download_cvdb(progress=False).read_bytes() == b"abc"
    server.dataverse(b"abd", md5=ABC["MD5"])
    with pytest.raises(DataError, match="checksum mismatch"):
        download.download_cvdb(force=True, progress=False)


@pytest.mark.parametrize("checksum,message", [
    ({"type": "CRC32", "value": "352441c2"}, "unknown checksum type 'CRC32' (known: MD5, SHA-1, SHA-256, SHA-512)"),
    ({"value": ABC["MD5"]}, "unknown checksum type None"),
    (None, "no checksum is declared"),
    ({"type": "MD5", "value": ""}, "no checksum is declared"),
], ids=["unknown-type", "no-type", "none", "empty-value"])
def test_cvdb_unverifiable_download_is_refused_before_fetching(server, checksum, message, capsys):
    server.dataverse(b"abc", checksum=checksum)
    assert main(["data", "download", "cvdb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert DATAFILE not in server.requests and leftovers() == []


def test_cvdb_record_without_the_file(server):
    server.dataverse(b"abc", checksum={"type": "MD5", "value": ABC["MD5"]})
    record = json.loads(server.routes[DATAVERSE_API])
    record["data"]["latestVersion"]["files"].pop()
    server.routes[DATAVERSE_API] = json.dumps(record).encode()
    with pytest.raises(DataError, match=f"no file named {download.CVDB_FILE}"):
        download.download_cvdb(progress=False)


def test_cvdb_server_error_leaves_nothing(server):
    server.dataverse(b"abc", checksum={"type": "MD5", "value": ABC["MD5"]})
    del server.routes[DATAFILE]
    with pytest.raises(DataError, match="download failed .*404"):
        download.download_cvdb(progress=False)
    assert leftovers() == []


def test_unreachable_server_fails_at_once_in_one_line(monkeypatch, tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "home"))
    monkeypatch.setenv("METAOCL_CVDB_URL", f"http://127.0.0.1:{port}")
    assert main(["data", "download", "cvdb"]) == 2  # refused by the reachability probe, before any request
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot reach 127.0.0.1:{port}" in err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("bad", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://", "http://127.0.0.1:99999"])
def test_bad_server_url_is_one_line_naming_the_variable(monkeypatch, tmp_path, capsys, bad):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "home"))
    monkeypatch.setenv("METAOCL_CVDB_URL", bad)
    assert main(["data", "download", "cvdb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"metaocl: error: $METAOCL_CVDB_URL: {bad!r} is not a server URL (expected http(s)://HOST[:PORT])"
    assert not (tmp_path / "home").exists()


def test_url_argument_beats_the_environment(server, monkeypatch):
    monkeypatch.setenv("METAOCL_CVDB_URL", "http://127.0.0.1:1")
    server.dataverse(b"abc", checksum={"type": "SHA-1", "value": ABC["SHA-1"]})
    assert download.download_cvdb(progress=False, url=server.url + "/").read_bytes() == b"abc"


# ------------------------------------------------------------------------------------------------
# T-REx (figshare zip)
# ------------------------------------------------------------------------------------------------
def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


TREX_JSON = {"TREx/re-nlg_0-10000.json": b'[{"docid": "Q1"}]', "TREx/re-nlg_10000-20000.json": b'[{"docid": "Q2"}]'}


def test_trex_downloads_the_largest_zip_checks_it_and_unpacks(server, capsys):
    archive = make_zip(TREX_JSON)
    server.figshare(archive, hashlib.md5(archive).hexdigest())
    assert main(["data", "download", "trex"]) == 0
    folder = home() / "trex"
    assert capsys.readouterr().out.strip() == f"trex: {folder}"
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.json")} == TREX_JSON
    assert "/files/sample.zip" not in server.requests
    assert not (home() / "trex.part").exists() and not (home() / "downloads" / "TREx_json.zip.part").exists()
    assert (home() / "downloads" / "TREx_json.zip").read_bytes() == archive
    assert main(["data", "download", "trex"]) == 0 and server.requests.count("/files/trex.zip") == 1


def test_trex_corrupted_zip_is_refused_and_nothing_is_unpacked(server, capsys):
    archive = make_zip(TREX_JSON)
    server.figshare(archive[:-20] + b"\0" * 20, hashlib.md5(archive).hexdigest())
    assert main(["data", "download", "trex"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch (md5" in err
    assert leftovers() == [] and not (home() / "trex").exists()


def test_trex_not_a_zip_or_no_json_is_refused_and_leaves_no_folder(server):
    junk = b"this is not a zip"
    server.figshare(junk, hashlib.md5(junk).hexdigest())
    with pytest.raises(DataError, match="not a zip file"):
        download.download_trex(progress=False)
    assert leftovers() == [] and not (home() / "trex").exists() and not (home() / "trex.part").exists()
    empty = make_zip({"README.txt": b"no json here"})
    server.figshare(empty, hashlib.md5(empty).hexdigest())
    with pytest.raises(DataError, match="holds no \\*.json files"):
        download.download_trex(progress=False)
    assert leftovers() == [] and not (home() / "trex").exists() and not (home() / "trex.part").exists()


def test_trex_without_a_declared_md5_is_refused_before_fetching(server):
    server.figshare(make_zip(TREX_JSON), None)
    with pytest.raises(DataError, match="no checksum is declared"):
        download.download_trex(progress=False)
    assert "/files/trex.zip" not in server.requests and leftovers() == []
