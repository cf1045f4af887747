"""A Hugging Face hub stand-in on loopback, for tests: serves the repos a test puts in it.

It speaks the part of the hub's HTTP API that ``huggingface_hub.snapshot_download`` and
``HfApi.model_info`` use (huggingface_hub 1.x/2.x):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: the model JSON (``id``,
  ``sha``, ``siblings`` with sizes; ``?blobs=true`` adds ``blobId`` and ``lfs``);
- ``GET /api/models/{repo}/tree/{rev}?recursive=...``: the file list (``type``, ``path``, ``size``,
  ``oid``, ``lfs``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: the file, with ``X-Repo-Commit``, ``ETag`` (the
  sha256 of LFS files, the git blob id of others) and ``Content-Length``.

An unknown repo is 404 with ``X-Error-Code: RepoNotFound``, as the hub answers. ``corrupt`` makes
one file's bytes differ from the sha256 the listing declares (a broken download);
``requests`` records every path asked.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

LFS_MIN = 1024  # files at least this big are served as LFS files (sha256 ETag), as the hub does


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LoopbackHub:
    def __init__(self, host: str = "127.0.0.1"):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.corrupt: set[tuple[str, str]] = set()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add_folder(self, repo: str, folder: Path) -> None:
        self.repos[repo] = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    def sha(self, repo: str) -> str:
        h = hashlib.sha1(repo.encode())
        for name, data in sorted(self.repos[repo].items()):
            h.update(name.encode() + hashlib.sha256(data).digest())
        return h.hexdigest()

    def size(self, repo: str) -> int:
        return sum(len(d) for d in self.repos[repo].values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --------------------------------------------------------------------------------------------
    def _entry(self, name: str, data: bytes, blobs: bool) -> dict:
        out = {"rfilename": name, "size": len(data)}
        if blobs:
            out["blobId"] = _blob_id(data)
            if len(data) >= LFS_MIN:
                out["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return out

    def _send(self, h, status: int, data: bytes, headers: dict | None = None, body: bool = True) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _json(self, h, obj, body: bool) -> None:
        self._send(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    def _not_found(self, h, body: bool, code: str = "RepoNotFound") -> None:
        self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": code,
                                                                   "Content-Type": "application/json"}, body)

    def _serve(self, h, body: bool) -> None:
        self.requests.append(h.command + " " + h.path)
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._not_found(h, body)
            files, rest = self.repos[repo], parts[4:]
            if not rest or rest[0] == "revision":
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                return self._json(h, {"id": repo, "modelId": repo, "sha": self.sha(repo), "private": False,
                                      "siblings": [self._entry(n, d, blobs) for n, d in sorted(files.items())]}, body)
            if rest[0] == "tree":
                listing = []
                for n, d in sorted(files.items()):
                    e = {"type": "file", "path": n, "size": len(d), "oid": _blob_id(d)}
                    if len(d) >= LFS_MIN:
                        e["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}
                    listing.append(e)
                return self._json(h, listing, body)
            return self._not_found(h, body, "EntryNotFound")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if repo not in self.repos:
                return self._not_found(h, body)
            if name not in self.repos[repo]:
                return self._not_found(h, body, "EntryNotFound")
            data = self.repos[repo][name]
            etag = hashlib.sha256(data).hexdigest() if len(data) >= LFS_MIN else _blob_id(data)
            headers = {"X-Repo-Commit": self.sha(repo), "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if len(data) >= LFS_MIN:
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            if (repo, name) in self.corrupt:
                data = bytes(b ^ 0xFF for b in data)
            return self._send(h, 200, data, headers, body)
        return self._not_found(h, body)


def save_tiny_model(folder: Path) -> Path:
    """A tiny GPT-NeoX with its tokenizer, saved as a hub repo holds it (config, safetensors, tokenizer)."""
    from metaocl.engine.lm_models import build_builtin

    texts = [f"entity {i} is the name of person {i % 7} born in {1900 + i}" for i in range(200)]
    loaded = build_builtin("tiny-gpt-neox", texts)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
