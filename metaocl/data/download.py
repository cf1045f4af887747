"""`metaocl data download cvdb|trex|mnist`: fetch the public source files into :func:`data_home`.

- CVDB: the Dataverse record doi:10.21410/7E4/RDAG3O at data.sciencespo.fr (Laouenan et al. 2022,
  Data Records). The record's file list (Dataverse API) gives the file id and its checksum with the
  checksum's type (Dataverse: MD5, SHA-1, SHA-256 or SHA-512); the download is checked with that
  algorithm. Lands at ``data_home()/cvdb/cross-verified-database.csv.gz``.
- T-REx: the figshare article 10.6084/m9.figshare.5146864 (Elsahar et al. 2018). The figshare API
  gives the zip's URL and MD5; the zip is checked and unpacked into ``data_home()/trex/``.
- MNIST: torchvision's own downloader (with its MD5 checks) into ``data_home()/MNIST/raw``, where
  the MNIST experiment reads it with ``download=False``.

Every download is verified; nothing is ever kept unverified. A checksum of a type not listed in
:data:`CHECKSUM_TYPES`, or a record that declares no checksum at all, is refused in one line before
any byte is fetched (put the file in place by hand instead; the line says where).

Offline (the host does not answer within a few seconds) every command fails at once with one line
that says which file to put where by hand. Downloads go to ``*.part`` files and are renamed only
after the checksum matched, so a failed download never looks like data; the zip is unpacked into
``trex.part/`` and renamed the same way.

The servers are ``https://data.sciencespo.fr`` and ``https://api.figshare.com``; a mirror (or a test
server) replaces them with ``$METAOCL_CVDB_URL`` / ``$METAOCL_TREX_URL`` or the ``url`` argument
(scheme, host and port, e.g. ``http://127.0.0.1:8000``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from metaocl.data import data_home
from metaocl.data.errors import DataError

CVDB_HOST = "data.sciencespo.fr"
CVDB_DOI = "doi:10.21410/7E4/RDAG3O"
CVDB_FILE = "cross-verified-database.csv.gz"
CVDB_PAGE = f"https://{CVDB_HOST}/dataset.xhtml?persistentId={CVDB_DOI}"
TREX_HOST = "api.figshare.com"
TREX_ARTICLE = 5146864
TREX_PAGE = "https://doi.org/10.6084/m9.figshare.5146864"
MNIST_HOST = "ossci-datasets.s3.amazonaws.com"
MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
TIMEOUT_S = 5.0
LINE_EVERY_S = 30.0  # without a progress bar (no terminal): one progress line this often
# Dataverse's checksum types (its DataFile.ChecksumType) and figshare's MD5 -> hashlib's name.
CHECKSUM_TYPES = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}


def _base_url(url: str | None, env: str, host: str) -> str:
    """The server to ask: the ``url`` argument, else ``$env``, else ``https://host``."""
    given = url or os.environ.get(env) or f"https://{host}"
    base = given.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        where = "url argument" if url else f"${env}"
        raise DataError(f"{where}: {given!r} is not a server URL (expected http(s)://HOST[:PORT])")
    return base


def _reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _require(url: str, by_hand: str) -> None:
    if not _reachable(url):
        raise DataError(f"cannot reach {urllib.parse.urlsplit(url).netloc} (offline?); {by_hand}")


def _get_json(url: str, by_hand: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{url}: {e}; {by_hand}") from None


def _checksum(kind: str | None, value: str | None, where: str, by_hand: str) -> tuple[str, str]:
    """``(hashlib name, expected hex digest)`` for a declared checksum; refuses none or an unknown type."""
    if not value:
        raise DataError(f"{where}: no checksum is declared, so the download cannot be verified; {by_hand}")
    algorithm = CHECKSUM_TYPES.get(str(kind or "").upper())
    if algorithm is None:
        raise DataError(f"{where}: unknown checksum type {kind!r} (known: {', '.join(CHECKSUM_TYPES)}); {by_hand}")
    return algorithm, str(value).strip().lower()


def _fetch(url: str, dest: Path, checksum: tuple[str, str], by_hand: str, progress: bool) -> Path:
    """Stream ``url`` to ``dest.part``, check it against ``checksum``, then rename it to ``dest``."""
    from tqdm import tqdm

    algorithm, expected = checksum
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.new(algorithm)
    bar_shown = progress and sys.stderr.isatty()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            started = last = time.monotonic()
            done = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not bar_shown) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
                    if progress and not bar_shown and time.monotonic() - last >= LINE_EVERY_S:
                        last = time.monotonic()  # no terminal: a line now and then, for the logs
                        print(f"metaocl: downloading {dest.name}: {done / 1e6:,.0f}"
                              + (f" of {total / 1e6:,.0f}" if total else "") + f" MB, {last - started:.0f} s",
                              file=sys.stderr, flush=True)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({e}); {by_hand}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: checksum mismatch ({algorithm} {digest.hexdigest()} != declared {expected}); {by_hand}")
    part.replace(dest)
    return dest


def download_cvdb(force: bool = False, progress: bool = True, url: str | None = None) -> Path:
    dest = data_home() / "cvdb" / CVDB_FILE
    by_hand = f"download {CVDB_FILE} from {CVDB_PAGE} and put it at {dest}"
    if dest.is_file() and not force:
        return dest
    base = _base_url(url, "METAOCL_CVDB_URL", CVDB_HOST)
    _require(base, by_hand)
    api = f"{base}/api/datasets/:persistentId/?persistentId={CVDB_DOI}"
    meta = _get_json(api, by_hand)
    files = meta.get("data", {}).get("latestVersion", {}).get("files", [])
    for entry in files:
        df = entry.get("dataFile", {})
        if df.get("filename") == CVDB_FILE:
            declared = df.get("checksum") or ({"type": "MD5", "value": df["md5"]} if df.get("md5") else {})
            checksum = _checksum(declared.get("type"), declared.get("value"), f"{api}: {CVDB_FILE}", by_hand)
            return _fetch(f"{base}/api/access/datafile/{df['id']}", dest, checksum, by_hand, progress)
    raise DataError(f"{api}: no file named {CVDB_FILE} in the record; {by_hand}")


def download_trex(force: bool = False, progress: bool = True, url: str | None = None) -> Path:
    folder = data_home() / "trex"
    by_hand = f"download the T-REx JSON zip from {TREX_PAGE} and unpack its *.json files into {folder}/"
    if folder.is_dir() and any(folder.rglob("*.json")) and not force:
        return folder
    base = _base_url(url, "METAOCL_TREX_URL", TREX_HOST)
    _require(base, by_hand)
    api = f"{base}/v2/articles/{TREX_ARTICLE}"
    meta = _get_json(api, by_hand)
    zips = [f for f in meta.get("files", []) if str(f.get("name", "")).lower().endswith(".zip")]
    if not zips:
        raise DataError(f"{api}: no zip file in the article; {by_hand}")
    entry = max(zips, key=lambda f: f.get("size", 0))  # the full JSON release, not a sample
    checksum = _checksum("MD5", entry.get("computed_md5") or entry.get("supplied_md5"), f"{api}: {entry['name']}", by_hand)
    archive = _fetch(entry["download_url"], data_home() / "downloads" / entry["name"], checksum, by_hand, progress)
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        if not any(tmp.rglob("*.json")):
            raise DataError(f"{archive}: the zip holds no *.json files; {by_hand}")
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive}: not a zip file ({e}); {by_hand}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def download_mnist(force: bool = False, progress: bool = True) -> Path:
    raw = data_home() / "MNIST" / "raw"
    by_hand = f"put {', '.join(MNIST_FILES)} (from https://{MNIST_HOST}/mnist/) into {raw}/"
    if not force and all((raw / f.removesuffix(".gz")).is_file() for f in MNIST_FILES):
        return raw
    _require(f"https://{MNIST_HOST}", by_hand)
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(root=str(data_home()), train=train, download=True)
    except (RuntimeError, OSError, urllib.error.URLError) as e:
        raise DataError(f"MNIST download failed ({str(e).splitlines()[0]}); {by_hand}") from None
    return raw


def present(name: str) -> bool:
    """Whether source ``name`` (cvdb | trex | mnist) is already in :func:`data_home` (what the
    downloaders check before fetching)."""
    if name == "cvdb":
        return (data_home() / "cvdb" / CVDB_FILE).is_file()
    if name == "trex":
        folder = data_home() / "trex"
        return folder.is_dir() and any(folder.rglob("*.json"))
    raw = data_home() / "MNIST" / "raw"
    return all((raw / f.removesuffix(".gz")).is_file() for f in MNIST_FILES)


DOWNLOADERS = {"cvdb": download_cvdb, "trex": download_trex, "mnist": download_mnist}


def download(name: str, force: bool = False, progress: bool = True) -> Path:
    """Fetch source ``name`` (cvdb | trex | mnist) into :func:`data_home`; returns where it is."""
    if name not in DOWNLOADERS:
        raise DataError(f"unknown data source {name!r}; known: {', '.join(DOWNLOADERS)}")
    return DOWNLOADERS[name](force=force, progress=progress)
