"""`metaocl data download cvdb|trex|mnist`: fetch the public source files into :func:`data_home`.

- CVDB: the Dataverse record doi:10.21410/7E4/RDAG3O at data.sciencespo.fr (Laouenan et al. 2022,
  Data Records). The record's file list (Dataverse API) gives the file id and its MD5; the download
  is checked against that MD5. Lands at ``data_home()/cvdb/cross-verified-database.csv.gz``.
- T-REx: the figshare article 10.6084/m9.figshare.5146864 (Elsahar et al. 2018). The figshare API
  gives the zip's URL and MD5; the zip is checked and unpacked into ``data_home()/trex/``.
- MNIST: torchvision's own downloader (with its MD5 checks) into ``data_home()/MNIST/raw``, where
  the MNIST experiment reads it with ``download=False``.

Offline (the host does not answer within a few seconds) every command fails at once with one line
that says which file to put where by hand. Downloads go to ``*.part`` files and are renamed only
after the checksum matched, so a failed download never looks like data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import urllib.error
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


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _require(host: str, by_hand: str) -> None:
    if not _reachable(host):
        raise DataError(f"cannot reach {host} (offline?); {by_hand}")


def _get_json(url: str, by_hand: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise DataError(f"{url}: {e}; {by_hand}") from None


def _fetch(url: str, dest: Path, md5: str | None, by_hand: str, progress: bool) -> Path:
    """Stream ``url`` to ``dest`` (via ``dest.part``), checking the MD5 when known."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({e}); {by_hand}") from None
    if md5 and digest.hexdigest() != md5.lower():
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: checksum mismatch (md5 {digest.hexdigest()} != {md5}); {by_hand}")
    part.replace(dest)
    return dest


def download_cvdb(force: bool = False, progress: bool = True) -> Path:
    dest = data_home() / "cvdb" / CVDB_FILE
    by_hand = f"download {CVDB_FILE} from {CVDB_PAGE} and put it at {dest}"
    if dest.is_file() and not force:
        return dest
    _require(CVDB_HOST, by_hand)
    meta = _get_json(f"https://{CVDB_HOST}/api/datasets/:persistentId/?persistentId={CVDB_DOI}", by_hand)
    files = meta.get("data", {}).get("latestVersion", {}).get("files", [])
    for entry in files:
        df = entry.get("dataFile", {})
        if df.get("filename") == CVDB_FILE:
            md5 = df.get("md5") or (df.get("checksum") or {}).get("value")
            return _fetch(f"https://{CVDB_HOST}/api/access/datafile/{df['id']}", dest, md5, by_hand, progress)
    raise DataError(f"{CVDB_PAGE}: no file named {CVDB_FILE} in the record; {by_hand}")


def download_trex(force: bool = False, progress: bool = True) -> Path:
    folder = data_home() / "trex"
    by_hand = f"download the T-REx JSON zip from {TREX_PAGE} and unpack its *.json files into {folder}/"
    if folder.is_dir() and any(folder.rglob("*.json")) and not force:
        return folder
    _require(TREX_HOST, by_hand)
    meta = _get_json(f"https://{TREX_HOST}/v2/articles/{TREX_ARTICLE}", by_hand)
    zips = [f for f in meta.get("files", []) if str(f.get("name", "")).lower().endswith(".zip")]
    if not zips:
        raise DataError(f"{TREX_PAGE}: no zip file in the article; {by_hand}")
    entry = max(zips, key=lambda f: f.get("size", 0))  # the full JSON release, not a sample
    archive = _fetch(entry["download_url"], data_home() / "downloads" / entry["name"], entry.get("computed_md5"), by_hand, progress)
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: not a zip file ({e}); {by_hand}") from None
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def download_mnist(force: bool = False, progress: bool = True) -> Path:
    raw = data_home() / "MNIST" / "raw"
    by_hand = f"put {', '.join(MNIST_FILES)} (from https://{MNIST_HOST}/mnist/) into {raw}/"
    if not force and all((raw / f.removesuffix(".gz")).is_file() for f in MNIST_FILES):
        return raw
    _require(MNIST_HOST, by_hand)
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(root=str(data_home()), train=train, download=True)
    except (RuntimeError, OSError, urllib.error.URLError) as e:
        raise DataError(f"MNIST download failed ({str(e).splitlines()[0]}); {by_hand}") from None
    return raw


DOWNLOADERS = {"cvdb": download_cvdb, "trex": download_trex, "mnist": download_mnist}


def download(name: str, force: bool = False, progress: bool = True) -> Path:
    """Fetch source ``name`` (cvdb | trex | mnist) into :func:`data_home`; returns where it is."""
    if name not in DOWNLOADERS:
        raise DataError(f"unknown data source {name!r}; known: {', '.join(DOWNLOADERS)}")
    return DOWNLOADERS[name](force=force, progress=progress)
