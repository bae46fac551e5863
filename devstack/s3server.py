#!/usr/bin/env python3
"""A small S3-compatible endpoint for the local development stack (standard library only).

Every object lives on disk and every body is streamed in pieces of at most 1 MiB, so the
server's memory stays flat while clients upload multi-GB objects with multipart transfers.
Requests must carry a valid AWS Signature Version 4 Authorization header; addressing
is path-style only (``http://127.0.0.1:PORT/bucket/key``).

Layout under ``--root``::

    buckets/<bucket>/config.json                      creation time, public access block, encryption
    buckets/<bucket>/objects/<quoted key>.data         object bytes
    buckets/<bucket>/objects/<quoted key>.meta.json    size, etag, content type, sse, user metadata
    buckets/<bucket>/uploads/<uploadId>/meta.json      an in-progress multipart upload
    buckets/<bucket>/uploads/<uploadId>/part-00001.data / part-00001.json
    tmp/                                               bodies being received (emptied at start)

An object is visible once its ``.meta.json`` exists; data is written first, then the meta.

Usage::

    python devstack/s3server.py --root DIR --host 127.0.0.1 --port 59000 \\
        --access-key K --secret-key S [--bucket NAME ...] [--pid-file F] [--log-file F]
"""
from __future__ import annotations

import argparse
import base64
import bisect
import email.utils
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import uuid
import xml.etree.ElementTree as ET
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import parse_qsl, quote, unquote

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
CHUNK = 1 << 20
MIN_PART_SIZE = 5 << 20
MAX_XML_BODY = 1 << 20
DRAIN_LIMIT = 16 << 20
SSE_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
OWNER = ("7d5a6e0c1f0b4a1e9c3b2d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a", "devstack")
PAB_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
DEFAULT_ENCRYPTION = {"sse": "AES256", "kms_key_id": None, "bucket_key": False}
STORED_HEADERS = ("Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires")
SUBRESOURCES = frozenset(
    "accelerate acl analytics attributes cors delete encryption intelligent-tiering inventory legal-hold "
    "lifecycle location logging metrics notification object-lock ownershipControls policy policyStatus "
    "publicAccessBlock replication requestPayment restore retention select tagging torrent uploadId "
    "uploads versioning versions website".split())
log = logging.getLogger("s3server")


class S3Error(Exception):
    """An S3 error response: HTTP status, error code, message, resource and extra headers."""

    def __init__(self, status: int, code: str, message: str, resource: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.resource, self.headers = resource, headers or {}


class ClientGone(Exception):
    """The connection ended (or stalled) before the whole request body arrived."""


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(404, "NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, "
                   "or the upload may have been aborted or completed.", upload_id)


def malformed_xml() -> S3Error:
    return S3Error(400, "MalformedXML", "The XML you provided was not well-formed or did not validate "
                   "against our published schema")


def iso8601(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def node(parent: ET.Element | None, tag: str, text: Any = None) -> ET.Element:
    """Create a root element (in the S3 namespace) or a child element with optional text."""
    el = ET.Element(tag, xmlns=NS) if parent is None else ET.SubElement(parent, tag)
    if isinstance(text, bool):
        el.text = "true" if text else "false"
    elif text is not None:
        el.text = str(text)
    return el


def to_xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def sse_headers(meta: dict[str, Any]) -> dict[str, str]:
    """The server-side-encryption response headers for an object or upload."""
    headers = {}
    if meta.get("sse"):
        headers["x-amz-server-side-encryption"] = meta["sse"]
    if meta.get("kms_key_id"):
        headers["x-amz-server-side-encryption-aws-kms-key-id"] = meta["kms_key_id"]
    return headers


def copy_range(src: BinaryIO, dest: Path, offset: int, length: int) -> str:
    """Stream `length` bytes of `src` from `offset` into a new file; return their md5 hex."""
    md5 = hashlib.md5()
    src.seek(offset)
    with open(dest, "wb") as out:
        while length > 0:
            chunk = src.read(min(CHUNK, length))
            if not chunk:
                raise OSError("source object shrank while being copied")
            out.write(chunk)
            md5.update(chunk)
            length -= len(chunk)
    return md5.hexdigest()


def append_file(src: Path, out: BinaryIO) -> None:
    """Append a file to `out` (opened unbuffered): in the kernel if possible, else in 1 MiB pieces."""
    with open(src, "rb", buffering=0) as inp:
        try:
            while os.copy_file_range(inp.fileno(), out.fileno(), 1 << 30):
                pass
        except (AttributeError, OSError):  # no copy_file_range here: both offsets are still right
            shutil.copyfileobj(inp, out, CHUNK)


class Crc32:
    """zlib.crc32 behind the hashlib interface used for x-amz-checksum-crc32."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUMS: dict[str, Callable[[], Any]] = {"crc32": Crc32, "sha1": hashlib.sha1, "sha256": hashlib.sha256}


class Digests:
    """Running digests of a request body, checked at the end against what the client declared."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers
        self.md5 = hashlib.md5()
        payload = headers.get("x-amz-content-sha256", "")
        self.sha256 = hashlib.sha256() if re.fullmatch(r"[0-9a-f]{64}", payload) else None
        declared = {name.lower()[len("x-amz-checksum-"):] for name in headers.keys()
                    if name.lower().startswith("x-amz-checksum-")}
        declared |= {t.strip().lower()[len("x-amz-checksum-"):]
                     for t in headers.get("x-amz-trailer", "").split(",") if t.strip()}
        self.checksums = {alg: CHECKSUMS[alg]() for alg in declared if alg in CHECKSUMS}

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        for h in (self.sha256, *self.checksums.values()):
            if h is not None:
                h.update(chunk)

    def verify(self, trailers: dict[str, str]) -> None:
        """Raise BadDigest / XAmzContentSHA256Mismatch when a declared digest does not match."""
        content_md5 = self.headers.get("Content-MD5")
        if content_md5 is not None and base64.b64encode(self.md5.digest()).decode() != content_md5.strip():
            raise S3Error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
        if self.sha256 is not None and self.sha256.hexdigest() != self.headers["x-amz-content-sha256"]:
            raise S3Error(400, "XAmzContentSHA256Mismatch",
                          "The provided 'x-amz-content-sha256' header does not match what was computed.")
        for alg, h in self.checksums.items():
            expected = trailers.get("x-amz-checksum-" + alg) or self.headers.get("x-amz-checksum-" + alg)
            if expected and base64.b64encode(h.digest()).decode() != expected.strip():
                raise S3Error(400, "BadDigest", f"The {alg.upper()} you specified did not match the "
                              "calculated checksum.")


class BodyReader:
    """Reads a request body from the socket, undoing HTTP chunked and aws-chunked framing.

    read(n) returns the next decoded piece of at most n bytes and b"" at the end. A connection
    that ends early raises ClientGone; malformed framing raises S3Error.
    """

    def __init__(self, rfile: BinaryIO, headers: Any) -> None:
        self.rfile = rfile
        self.http_chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        self.has_length = self.http_chunked or length is not None
        if length is not None and not length.strip().isdigit():
            raise S3Error(400, "InvalidArgument", "Content-Length must be a non-negative integer")
        self.remaining = int(length) if length is not None and not self.http_chunked else 0
        self.finished = not self.http_chunked and self.remaining == 0
        self.http_chunk_left = 0
        self.aws_chunked = ("aws-chunked" in headers.get("Content-Encoding", "").lower()
                            or headers.get("x-amz-content-sha256", "").startswith("STREAMING-"))
        self.aws_left, self.aws_done = 0, False
        decoded = headers.get("x-amz-decoded-content-length", "")
        self.decoded_length = int(decoded) if decoded.isdigit() else None
        self.decoded = 0
        self.trailers: dict[str, str] = {}

    def _socket_read(self, n: int) -> bytes:
        try:
            data = self.rfile.read(n)
        except OSError as exc:
            raise ClientGone(str(exc)) from exc
        if not data:
            raise ClientGone("connection closed before the whole body arrived")
        return data

    def _socket_readline(self, limit: int = 8192) -> bytes:
        try:
            line = self.rfile.readline(limit)
        except OSError as exc:
            raise ClientGone(str(exc)) from exc
        if not line:
            raise ClientGone("connection closed before the whole body arrived")
        return line

    @staticmethod
    def _chunk_size(line: bytes, framing: str) -> int:
        """The size on a chunk header line (`<hex>[;extensions]`)."""
        size = line.split(b";")[0].strip()
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise S3Error(400, "IncompleteBody", f"Malformed {framing} body")
        return int(size, 16)

    def _add_trailer(self, line: bytes) -> None:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            self.trailers[name.strip().lower()] = value.strip()

    def _raw_read(self, n: int) -> bytes:
        """Up to n bytes of the body after HTTP-level framing; b"" once it is all read."""
        if self.finished:
            return b""
        if not self.http_chunked:
            data = self._socket_read(min(n, self.remaining))
            self.remaining -= len(data)
            self.finished = self.remaining == 0
            return data
        if self.http_chunk_left == 0:
            size = self._chunk_size(self._socket_readline(), "chunked transfer-encoded")
            if size == 0:
                while (line := self._socket_readline()).strip():
                    self._add_trailer(line)
                self.finished = True
                return b""
            self.http_chunk_left = size
        data = self._socket_read(min(n, self.http_chunk_left))
        self.http_chunk_left -= len(data)
        if self.http_chunk_left == 0:
            self._socket_readline()  # the CRLF after the chunk data
        return data

    def _raw_readline(self) -> bytes:
        """One aws-chunked framing line, counted against the HTTP body length."""
        if self.finished:
            return b""
        if not self.http_chunked:
            line = self._socket_readline(min(self.remaining, 8192))
            self.remaining -= len(line)
            self.finished = self.remaining == 0
            return line
        line = bytearray()
        while not line.endswith(b"\n") and len(line) < 8192 and (c := self._raw_read(1)):
            line += c
        return bytes(line)

    def _aws_read(self, n: int) -> bytes:
        if self.aws_done:
            return b""
        if self.aws_left == 0:
            size = self._chunk_size(self._raw_readline(), "aws-chunked")
            if size == 0:
                while (line := self._raw_readline()).strip():
                    self._add_trailer(line)
                self.aws_done = True
                self.drain()
                if self.decoded_length is not None and self.decoded != self.decoded_length:
                    raise S3Error(400, "IncompleteBody", "The decoded body does not have the length given "
                                  "by x-amz-decoded-content-length")
                return b""
            self.aws_left = size
        data = self._raw_read(min(n, self.aws_left))
        if not data:
            raise S3Error(400, "IncompleteBody", "The aws-chunked body ended inside a chunk")
        self.aws_left -= len(data)
        if self.aws_left == 0 and self._raw_readline().strip():
            raise S3Error(400, "IncompleteBody", "Malformed aws-chunked body")
        return data

    def read(self, n: int = CHUNK) -> bytes:
        data = self._aws_read(n) if self.aws_chunked else self._raw_read(n)
        self.decoded += len(data)
        return data

    def drain(self) -> None:
        """Read and discard whatever is left of the body."""
        while self._raw_read(CHUNK):
            pass


class Storage:
    """All on-disk state: buckets, objects and multipart uploads under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root, self.buckets, self.tmp = root, root / "buckets", root / "tmp"
        self.lock = threading.RLock()  # guards commits that touch more than one file
        self.buckets.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # bodies of requests that never finished
        self.tmp.mkdir()

    def temp_path(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Write JSON atomically (temp file, then rename)."""
        tmp = self.temp_path()
        tmp.write_text(json.dumps(data), encoding="utf-8")
        try:
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None

    # -- buckets -----------------------------------------------------------------------
    def bucket_dir(self, bucket: str) -> Path:
        if not BUCKET_RE.match(bucket):
            raise no_such_bucket(bucket)
        return self.buckets / bucket

    def config(self, bucket: str) -> dict[str, Any]:
        """The bucket's configuration; NoSuchBucket if it does not exist."""
        cfg = self.read_json(self.bucket_dir(bucket) / "config.json")
        if cfg is None:
            raise no_such_bucket(bucket)
        return cfg

    def update_config(self, bucket: str, change: Callable[[dict[str, Any]], None]) -> None:
        with self.lock:
            cfg = self.config(bucket)
            change(cfg)
            self.write_json(self.bucket_dir(bucket) / "config.json", cfg)

    def create_bucket(self, bucket: str, location: str = "") -> bool:
        """Create a bucket atomically; False if it already exists."""
        staging = self.temp_path()
        (staging / "objects").mkdir(parents=True)
        (staging / "uploads").mkdir()
        cfg = {"created": time.time(), "location": location, "encryption": dict(DEFAULT_ENCRYPTION),
               "public_access_block": {flag: True for flag in PAB_FLAGS}}
        (staging / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        try:
            os.rename(staging, self.bucket_dir(bucket))
            return True
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            return False

    def delete_bucket(self, bucket: str) -> None:
        with self.lock:
            path = self.bucket_dir(bucket)
            self.config(bucket)
            if any(name.endswith(".meta.json") for name in os.listdir(path / "objects")):
                raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty", bucket)
            trash = self.temp_path()
            os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def list_buckets(self) -> list[tuple[str, dict[str, Any]]]:
        found = [(p.name, self.read_json(p / "config.json")) for p in self.buckets.iterdir()]
        return sorted((name, cfg) for name, cfg in found if cfg is not None)

    # -- objects -----------------------------------------------------------------------
    def object_paths(self, bucket: str, key: str) -> tuple[Path, Path]:
        """The (data, meta) files of a key; long keys get a hashed name ('@' never survives quote)."""
        name = quote(key, safe="")
        if len(name) > 200:
            name = "@h-" + hashlib.sha256(key.encode()).hexdigest()
        base = self.bucket_dir(bucket) / "objects"
        return base / (name + ".data"), base / (name + ".meta.json")

    def head_object(self, bucket: str, key: str) -> dict[str, Any] | None:
        return self.read_json(self.object_paths(bucket, key)[1])

    def open_object(self, bucket: str, key: str) -> tuple[dict[str, Any], BinaryIO] | None:
        """A consistent (meta, open data file) pair, or None if the key does not exist."""
        self.config(bucket)
        data, meta_path = self.object_paths(bucket, key)
        with self.lock:
            meta = self.read_json(meta_path)
            try:
                return (meta, open(data, "rb")) if meta is not None else None
            except FileNotFoundError:
                return None

    def commit_object(self, bucket: str, key: str, data_tmp: Path, meta: dict[str, Any],
                      if_absent: bool = False) -> None:
        """Make a fully written temp file the key's data, then write its meta (which publishes it)."""
        data, meta_path = self.object_paths(bucket, key)
        with self.lock:
            self.config(bucket)
            if if_absent and meta_path.exists():
                raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you "
                              "specified did not hold", "If-None-Match")
            os.replace(data_tmp, data)
            self.write_json(meta_path, meta)

    def delete_object(self, bucket: str, key: str) -> None:
        with self.lock:
            for path in reversed(self.object_paths(bucket, key)):
                path.unlink(missing_ok=True)

    def list_keys(self, bucket: str) -> list[str]:
        """All visible keys of a bucket, in S3 (UTF-8 binary = code point) order."""
        keys = []
        for entry in os.scandir(self.bucket_dir(bucket) / "objects"):
            if entry.name.endswith(".meta.json"):
                stem = entry.name[:-len(".meta.json")]
                if not stem.startswith("@h-"):
                    keys.append(unquote(stem))
                elif (meta := self.read_json(Path(entry.path))) is not None:
                    keys.append(meta["key"])
        return sorted(keys)

    # -- multipart uploads --------------------------------------------------------------
    def create_upload(self, bucket: str, meta: dict[str, Any]) -> str:
        upload_id = uuid.uuid4().hex
        staging = self.temp_path()
        staging.mkdir()
        (staging / "meta.json").write_text(json.dumps({**meta, "upload_id": upload_id}), encoding="utf-8")
        os.rename(staging, self.bucket_dir(bucket) / "uploads" / upload_id)
        return upload_id

    def upload(self, bucket: str, key: str, upload_id: str) -> tuple[Path, dict[str, Any]]:
        """(directory, meta) of an in-progress upload of `key`; NoSuchUpload otherwise."""
        self.config(bucket)
        if not UPLOAD_ID_RE.match(upload_id):
            raise no_such_upload(upload_id)
        path = self.bucket_dir(bucket) / "uploads" / upload_id
        meta = self.read_json(path / "meta.json")
        if meta is None or meta["key"] != key:
            raise no_such_upload(upload_id)
        return path, meta

    def commit_part(self, path: Path, data_tmp: Path, info: dict[str, Any]) -> None:
        name = f"part-{info['part']:05d}"
        with self.lock:
            try:
                os.replace(data_tmp, path / (name + ".data"))
                self.write_json(path / (name + ".json"), info)
            except FileNotFoundError:
                raise no_such_upload(path.name) from None

    def parts(self, path: Path) -> list[dict[str, Any]]:
        found = (self.read_json(p) for p in sorted(path.glob("part-*.json")))
        return [p for p in found if p is not None]

    def remove_upload(self, path: Path) -> None:
        trash = self.temp_path()
        with self.lock:
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                raise no_such_upload(path.name) from None
        shutil.rmtree(trash, ignore_errors=True)

    def list_uploads(self, bucket: str) -> list[dict[str, Any]]:
        found = (self.read_json(p / "meta.json") for p in (self.bucket_dir(bucket) / "uploads").iterdir())
        return sorted((m for m in found if m is not None),
                      key=lambda m: (m["key"], m["initiated"], m["upload_id"]))


def walk_keys(keys: list[str], prefix: str, delimiter: str, after: str,
              max_keys: int) -> tuple[list[str], list[str], bool, str]:
    """One listing page: (keys, common prefixes, is truncated, last item returned)."""
    contents: list[str] = []
    prefixes: list[str] = []
    last, truncated = "", False
    start = max(bisect.bisect_right(keys, after) if after else 0, bisect.bisect_left(keys, prefix))
    for key in keys[start:]:
        if not key.startswith(prefix):
            break
        common = None
        if delimiter and (i := key.find(delimiter, len(prefix))) >= 0:
            common = key[:i + len(delimiter)]
            if common == after or (prefixes and prefixes[-1] == common):
                continue
        if len(contents) + len(prefixes) >= max_keys:
            truncated = True
            break
        (prefixes if common else contents).append(common or key)
        last = common or key
    return contents, prefixes, truncated, last


class S3Server(ThreadingHTTPServer):
    """A threading HTTP server that carries the storage and the one credential pair."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], store: Storage, access_key: str, secret_key: str) -> None:
        super().__init__(address, S3Handler)
        self.store, self.access_key, self.secret_key = store, access_key, secret_key


class S3Handler(BaseHTTPRequestHandler):
    """Parses, authenticates and dispatches one S3 request to an `op_*` method."""

    protocol_version = "HTTP/1.1"
    server_version = "devstack-s3"
    timeout = 120
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: S3Server
    _expect_continue = False

    ROUTES = {
        ("GET", "service", None): "op_list_buckets",
        ("PUT", "bucket", None): "op_create_bucket",
        ("HEAD", "bucket", None): "op_head_bucket",
        ("DELETE", "bucket", None): "op_delete_bucket",
        ("GET", "bucket", None): "op_list_objects",
        ("GET", "bucket", "location"): "op_get_location",
        ("GET", "bucket", "versioning"): "op_get_versioning",
        ("GET", "bucket", "encryption"): "op_get_encryption",
        ("PUT", "bucket", "encryption"): "op_put_encryption",
        ("DELETE", "bucket", "encryption"): "op_delete_encryption",
        ("GET", "bucket", "publicAccessBlock"): "op_get_public_access_block",
        ("PUT", "bucket", "publicAccessBlock"): "op_put_public_access_block",
        ("DELETE", "bucket", "publicAccessBlock"): "op_delete_public_access_block",
        ("GET", "bucket", "uploads"): "op_list_uploads",
        ("POST", "bucket", "delete"): "op_delete_objects",
        ("GET", "object", None): "op_get_object",
        ("HEAD", "object", None): "op_get_object",
        ("PUT", "object", None): "op_put_object",
        ("DELETE", "object", None): "op_delete_object",
        ("POST", "object", "uploads"): "op_create_upload",
        ("PUT", "object", "uploadId"): "op_upload_part",
        ("GET", "object", "uploadId"): "op_list_parts",
        ("POST", "object", "uploadId"): "op_complete_upload",
        ("DELETE", "object", "uploadId"): "op_abort_upload",
    }

    # -- request lifecycle ---------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def handle_expect_100(self) -> bool:
        """Defer "100 Continue" until the request is authenticated and its body is wanted."""
        self._expect_continue = True
        return True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        started = time.monotonic()
        self.store = self.server.store
        self.request_id = uuid.uuid4().hex[:16].upper()
        self.status, self.sent_bytes, self.responded, self._continue_sent = 0, 0, False, False
        self.body: BodyReader | None = None
        try:
            self.body = BodyReader(self.rfile, self.headers)
            self._parse_target()
            self._authenticate()
            self._dispatch()
        except S3Error as err:
            self._send_error(err)
        except ClientGone:
            self.close_connection, self.status = True, self.status or 499
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("internal error on %s %s", self.command, self.path)
            self._send_error(S3Error(500, "InternalError", "We encountered an internal error. Please try again."))
        finally:
            self._expect_continue = False
            received = self.body.decoded if self.body else 0
            log.info('%s "%s %s" %s in=%d out=%d %.1fms', self.address_string(), self.command, self.path,
                     self.status or "-", received, self.sent_bytes, (time.monotonic() - started) * 1000)

    def _parse_target(self) -> None:
        target = self.path
        if "://" in target.partition("?")[0]:  # absolute-form request target
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        self.raw_path, _, self.raw_query = target.partition("?")
        self.query = dict(parse_qsl(self.raw_query, keep_blank_values=True))
        bucket, _, key = self.raw_path[1:].partition("/")
        self.bucket, self.key = unquote(bucket), unquote(key)
        self.resource = "/" + self.bucket + ("/" + self.key if self.key else "")
        if len(self.key.encode()) > 1024:
            raise S3Error(400, "KeyTooLongError", "Your key is too long", self.resource)

    def _dispatch(self) -> None:
        level = "object" if self.key else "bucket" if self.bucket else "service"
        sub = next((name for name in self.query if name in SUBRESOURCES), None)
        method = self.ROUTES.get((self.command, level, sub))
        if method is None:
            operation = self.command.title() + level.title() + (sub[0].upper() + sub[1:] if sub else "")
            raise S3Error(501, "NotImplemented", f"The operation {operation} is not implemented by this "
                          "server", self.resource)
        getattr(self, method)()

    # -- authentication --------------------------------------------------------------------
    def _authenticate(self) -> None:
        """Verify the request's AWS Signature Version 4 Authorization header (no presigned URLs)."""
        auth = self.headers.get("Authorization")
        if not auth:
            raise S3Error(403, "AccessDenied", "Access Denied")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise S3Error(400, "InvalidRequest", "The authorization mechanism you have provided is not "
                          "supported. Please use AWS4-HMAC-SHA256.")
        fields = dict(p.strip().split("=", 1) for p in auth[17:].split(",") if "=" in p)
        payload = self.headers.get("x-amz-content-sha256")
        if payload is None:
            raise S3Error(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        credential = fields.get("Credential", "").split("/")
        if len(credential) != 5 or "Signature" not in fields:
            raise S3Error(400, "AuthorizationHeaderMalformed", "The authorization header is malformed")
        if credential[0] != self.server.access_key:
            raise S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist "
                          "in our records.")
        signed = fields.get("SignedHeaders", "")
        canonical_headers = "".join(f"{h}:{self._canonical_header(h)}\n" for h in signed.split(";"))
        key = ("AWS4" + self.server.secret_key).encode()
        for part in credential[1:]:
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        for query in self._canonical_queries():
            request = "\n".join([self.command, self.raw_path or "/", query, canonical_headers, signed, payload])
            to_sign = "\n".join(["AWS4-HMAC-SHA256", self.headers.get("x-amz-date", ""), "/".join(credential[1:]),
                                 hashlib.sha256(request.encode()).hexdigest()])
            if hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(),
                                   fields["Signature"]):
                return
        raise S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match "
                      "the signature you provided. Check your key and signing method.")

    def _canonical_header(self, name: str) -> str:
        return ",".join(" ".join(v.split()) for v in self.headers.get_all(name) or [])

    def _canonical_queries(self) -> list[str]:
        """The canonical query string, normalised and (as botocore signs it) as sent."""
        pairs = [(k, v) for k, _, v in (p.partition("=") for p in self.raw_query.split("&") if p)]
        enc = lambda s: quote(unquote(s), safe="-_.~")  # noqa: E731
        normalised = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in pairs))
        as_sent = "&".join(f"{k}={v}" for k, v in sorted(pairs))
        return [normalised] if as_sent == normalised else [normalised, as_sent]

    # -- request bodies -------------------------------------------------------------------
    def _send_continue(self) -> None:
        if self._expect_continue and not self._continue_sent:
            self._continue_sent = True
            self.send_response_only(100)
            self.end_headers()

    def _receive(self, dest: Path) -> tuple[int, str]:
        """Stream the request body into `dest`; return (size, md5 hex) once every digest checks out."""
        assert self.body is not None
        if not self.body.has_length:
            raise S3Error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        self._send_continue()
        digests, size = Digests(self.headers), 0
        with open(dest, "wb") as out:
            while chunk := self.body.read(CHUNK):
                out.write(chunk)
                digests.update(chunk)
                size += len(chunk)
        digests.verify(self.body.trailers)
        return size, digests.md5.hexdigest()

    def _read_xml(self, required: bool = True) -> ET.Element | None:
        """Read a small XML request body, namespaces stripped from the tags."""
        assert self.body is not None
        self._send_continue()
        digests, data = Digests(self.headers), bytearray()
        while chunk := self.body.read(CHUNK):
            data += chunk
            digests.update(chunk)
            if len(data) > MAX_XML_BODY:
                raise S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.")
        digests.verify(self.body.trailers)
        if not data.strip():
            if required:
                raise malformed_xml()
            return None
        try:
            root = ET.fromstring(bytes(data))
        except ET.ParseError:
            raise malformed_xml() from None
        for el in root.iter():
            el.tag = el.tag.rpartition("}")[2]
        return root

    # -- responses ------------------------------------------------------------------------
    def _finish_request_body(self) -> None:
        """Before answering: drain a small unread body to keep the connection, else close it."""
        body = self.body
        if body is None:  # failed before the body could even be framed
            self.close_connection = True
            return
        if body.finished:
            return
        if not (self._expect_continue and not self._continue_sent) and not body.http_chunked \
                and body.remaining <= DRAIN_LIMIT:
            try:
                body.drain()
                return
            except (ClientGone, S3Error):
                pass
        self.close_connection = True

    def _start_response(self, status: int, headers: dict[str, str], length: int) -> None:
        """Send the status line and headers; the caller then writes `length` bytes (unless HEAD)."""
        self._finish_request_body()
        self.send_response(status)
        self.send_header("x-amz-request-id", self.request_id)
        self.send_header("x-amz-id-2", base64.b64encode(self.request_id.encode()).decode())
        for name, value in headers.items():
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.responded, self.status = True, status

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if body:
            headers.setdefault("Content-Type", "application/xml")
        self._start_response(status, headers, len(body))
        if body and self.command != "HEAD":
            self.wfile.write(body)
            self.sent_bytes += len(body)

    def _send_xml(self, root: ET.Element, headers: dict[str, str] | None = None, status: int = 200) -> None:
        self._send(status, to_xml(root), headers)

    def _send_error(self, err: S3Error) -> None:
        if self.responded:  # too late for an error document: the client sees a short body
            self.close_connection = True
            return
        root = ET.Element("Error")
        for tag, text in (("Code", err.code), ("Message", err.message), ("Resource", err.resource),
                          ("RequestId", self.request_id)):
            node(root, tag, text)
        body = b"" if self.command == "HEAD" or err.status == 304 else to_xml(root)
        try:
            self._send(err.status, body, err.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    # -- helpers shared by operations -------------------------------------------------------
    def _int_query(self, name: str, default: int, low: int = 0, high: int = 1000) -> int:
        try:
            value = int(self.query.get(name, default))
            if value < low:
                raise ValueError
        except ValueError:
            raise S3Error(400, "InvalidArgument", f"Provided {name} not an integer or within "
                          "integer range") from None
        return min(value, high)

    def _encoder(self) -> Callable[[str], str]:
        if self.query.get("encoding-type") == "url":
            return lambda s: quote(s, safe="/")
        return lambda s: s

    def _request_sse(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The encryption a write asks for, or the bucket default."""
        alg = self.headers.get("x-amz-server-side-encryption")
        key_id = self.headers.get("x-amz-server-side-encryption-aws-kms-key-id")
        if "x-amz-server-side-encryption-customer-algorithm" in self.headers:
            raise S3Error(501, "NotImplemented", "SSE-C is not implemented by this server")
        if alg is None and key_id is None:
            return {"sse": cfg["encryption"]["sse"], "kms_key_id": cfg["encryption"].get("kms_key_id")}
        if alg not in SSE_ALGORITHMS:
            raise S3Error(400, "InvalidArgument", f"Server Side Encryption with {alg} is not supported: "
                          f"use one of {', '.join(SSE_ALGORITHMS)}", "x-amz-server-side-encryption")
        if key_id and not alg.startswith("aws:kms"):
            raise S3Error(400, "InvalidArgument", "x-amz-server-side-encryption-aws-kms-key-id requires "
                          "x-amz-server-side-encryption: aws:kms", "x-amz-server-side-encryption-aws-kms-key-id")
        return {"sse": alg, "kms_key_id": key_id}

    def _request_object_fields(self) -> dict[str, Any]:
        """Content type, user metadata and stored content headers of a write request."""
        headers = {}
        for name in STORED_HEADERS:
            value = self.headers.get(name, "")
            if name == "Content-Encoding":
                kept = (t.strip() for t in value.split(","))
                value = ",".join(t for t in kept if t and t.lower() != "aws-chunked")
            if value:
                headers[name] = value
        metadata = {k.lower()[len("x-amz-meta-"):]: v for k, v in self.headers.items()
                    if k.lower().startswith("x-amz-meta-")}
        return {"content_type": self.headers.get("Content-Type") or "binary/octet-stream",
                "metadata": metadata, "headers": headers}

    def _object_headers(self, meta: dict[str, Any]) -> dict[str, str]:
        headers = {"ETag": meta["etag"], "Last-Modified": http_date(meta["mtime"]),
                   "Content-Type": meta["content_type"], "Accept-Ranges": "bytes",
                   **meta.get("headers", {}), **sse_headers(meta)}
        headers.update({"x-amz-meta-" + k: v for k, v in meta.get("metadata", {}).items()})
        return headers

    def _check_conditions(self, meta: dict[str, Any]) -> None:
        """If-Match (412 PreconditionFailed) and If-None-Match (304) of GetObject and HeadObject."""
        etag = meta["etag"]

        def matches(value: str) -> bool:
            return any(t.strip() in ("*", etag, etag.strip('"')) for t in value.split(","))

        if_match, if_none = self.headers.get("If-Match"), self.headers.get("If-None-Match")
        if if_match is not None and not matches(if_match):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified "
                          "did not hold", "If-Match")
        if if_none is not None and matches(if_none):
            raise S3Error(304, "NotModified", "Not Modified", headers={"ETag": etag})

    def _parse_range(self, size: int) -> tuple[int, int] | None:
        """(first, last) byte of a single `Range: bytes=` request; None for the whole object."""
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", self.headers.get("Range", ""))
        if not m or (not m[1] and not m[2]) or (m[1] and m[2] and int(m[2]) < int(m[1])):
            return None
        first, last = (int(m[1]), int(m[2] or size - 1)) if m[1] else (max(0, size - int(m[2])), size - 1)
        if first >= size or (not m[1] and int(m[2]) == 0):
            raise S3Error(416, "InvalidRange", "The requested range is not satisfiable", self.resource,
                          {"Content-Range": f"bytes */{size}"})
        return first, min(last, size - 1)

    def _copy_source(self) -> tuple[str, str]:
        raw = self.headers["x-amz-copy-source"].partition("?")[0]
        bucket, _, key = unquote(raw).lstrip("/").partition("/")
        if not bucket or not key:
            raise S3Error(400, "InvalidArgument", "Copy Source must mention the source bucket and key: "
                          "sourcebucket/sourcekey", "x-amz-copy-source")
        return bucket, key

    def _open_copy_source(self) -> tuple[str, str, dict[str, Any], BinaryIO]:
        bucket, key = self._copy_source()
        opened = self.store.open_object(bucket, key)
        if opened is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.", f"/{bucket}/{key}")
        return bucket, key, *opened

    # -- service and bucket operations -------------------------------------------------------
    def op_list_buckets(self) -> None:
        root = node(None, "ListAllMyBucketsResult")
        owner = node(root, "Owner")
        node(owner, "ID", OWNER[0])
        node(owner, "DisplayName", OWNER[1])
        buckets = node(root, "Buckets")
        for name, cfg in self.store.list_buckets():
            entry = node(buckets, "Bucket")
            node(entry, "Name", name)
            node(entry, "CreationDate", iso8601(cfg["created"]))
        self._send_xml(root)

    def op_create_bucket(self) -> None:
        if not BUCKET_RE.match(self.bucket):
            raise S3Error(400, "InvalidBucketName", "The specified bucket is not valid.", self.bucket)
        root = self._read_xml(required=False)
        location = (root.findtext("LocationConstraint") or "") if root is not None else ""
        if not self.store.create_bucket(self.bucket, location):
            raise S3Error(409, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                          "succeeded and you already own it.", self.bucket)
        self._send(200, headers={"Location": "/" + self.bucket})

    def op_head_bucket(self) -> None:
        cfg = self.store.config(self.bucket)
        self._send(200, headers={"x-amz-bucket-region": cfg.get("location") or "us-east-1"})

    def op_delete_bucket(self) -> None:
        self.store.delete_bucket(self.bucket)
        self._send(204)

    def op_get_location(self) -> None:
        self._send_xml(node(None, "LocationConstraint", self.store.config(self.bucket).get("location") or None))

    def op_get_versioning(self) -> None:
        self.store.config(self.bucket)
        self._send_xml(node(None, "VersioningConfiguration"))

    def op_get_encryption(self) -> None:
        enc = self.store.config(self.bucket)["encryption"]
        root = node(None, "ServerSideEncryptionConfiguration")
        rule = node(root, "Rule")
        default = node(rule, "ApplyServerSideEncryptionByDefault")
        node(default, "SSEAlgorithm", enc["sse"])
        if enc.get("kms_key_id"):
            node(default, "KMSMasterKeyID", enc["kms_key_id"])
        node(rule, "BucketKeyEnabled", bool(enc.get("bucket_key")))
        self._send_xml(root)

    def op_put_encryption(self) -> None:
        self.store.config(self.bucket)
        rule = self._read_xml().find("Rule")
        default = rule.find("ApplyServerSideEncryptionByDefault") if rule is not None else None
        if default is None or default.findtext("SSEAlgorithm") not in SSE_ALGORITHMS:
            raise malformed_xml()
        enc = {"sse": default.findtext("SSEAlgorithm"), "kms_key_id": default.findtext("KMSMasterKeyID"),
               "bucket_key": (rule.findtext("BucketKeyEnabled") or "").strip().lower() == "true"}
        self.store.update_config(self.bucket, lambda cfg: cfg.update(encryption=enc))
        self._send(200)

    def op_delete_encryption(self) -> None:
        # Since January 2023 every bucket has SSE-S3 as its floor: deleting goes back to it.
        self.store.update_config(self.bucket, lambda cfg: cfg.update(encryption=dict(DEFAULT_ENCRYPTION)))
        self._send(204)

    def op_get_public_access_block(self) -> None:
        pab = self.store.config(self.bucket).get("public_access_block")
        if pab is None:
            raise S3Error(404, "NoSuchPublicAccessBlockConfiguration", "The public access block "
                          "configuration was not found", self.bucket)
        root = node(None, "PublicAccessBlockConfiguration")
        for flag in PAB_FLAGS:
            node(root, flag, bool(pab.get(flag)))
        self._send_xml(root)

    def op_put_public_access_block(self) -> None:
        self.store.config(self.bucket)
        root = self._read_xml()
        pab = {flag: (root.findtext(flag) or "").strip().lower() == "true" for flag in PAB_FLAGS}
        self.store.update_config(self.bucket, lambda cfg: cfg.update(public_access_block=pab))
        self._send(200)

    def op_delete_public_access_block(self) -> None:
        self.store.update_config(self.bucket, lambda cfg: cfg.update(public_access_block=None))
        self._send(204)

    def op_list_objects(self) -> None:
        """ListObjectsV2 (list-type=2) and ListObjects (v1, marker-based)."""
        self.store.config(self.bucket)
        v2, enc = self.query.get("list-type") == "2", self._encoder()
        prefix, delimiter = self.query.get("prefix", ""), self.query.get("delimiter", "")
        max_keys = self._int_query("max-keys", 1000)
        token = self.query.get("continuation-token")
        if v2 and token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError:
                raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect",
                              "continuation-token") from None
        else:
            after = self.query.get("start-after" if v2 else "marker", "")
        keys = self.store.list_keys(self.bucket)
        contents, prefixes, truncated, last = walk_keys(keys, prefix, delimiter, after, max_keys)
        root = node(None, "ListBucketResult")
        node(root, "Name", self.bucket)
        node(root, "Prefix", enc(prefix))
        if delimiter:
            node(root, "Delimiter", enc(delimiter))
        node(root, "MaxKeys", max_keys)
        if "encoding-type" in self.query:
            node(root, "EncodingType", self.query["encoding-type"])
        node(root, "IsTruncated", truncated)
        if v2:
            node(root, "KeyCount", len(contents) + len(prefixes))
            if token:
                node(root, "ContinuationToken", token)
            if truncated:
                node(root, "NextContinuationToken", base64.urlsafe_b64encode(last.encode()).decode())
            if "start-after" in self.query:
                node(root, "StartAfter", enc(self.query["start-after"]))
        else:
            node(root, "Marker", enc(after))
            if truncated:
                node(root, "NextMarker", enc(last))
        for key in contents:
            meta = self.store.head_object(self.bucket, key)
            if meta is None:
                continue  # deleted while listing
            entry = node(root, "Contents")
            for tag, text in (("Key", enc(key)), ("LastModified", iso8601(meta["mtime"])),
                              ("ETag", meta["etag"]), ("Size", meta["size"]), ("StorageClass", "STANDARD")):
                node(entry, tag, text)
            if not v2 or self.query.get("fetch-owner") == "true":
                owner = node(entry, "Owner")
                node(owner, "ID", OWNER[0])
                node(owner, "DisplayName", OWNER[1])
        for common in prefixes:
            node(node(root, "CommonPrefixes"), "Prefix", enc(common))
        self._send_xml(root)

    def op_list_uploads(self) -> None:
        self.store.config(self.bucket)
        enc, prefix = self._encoder(), self.query.get("prefix", "")
        key_marker, id_marker = self.query.get("key-marker", ""), self.query.get("upload-id-marker", "")
        max_uploads = self._int_query("max-uploads", 1000)
        uploads = [u for u in self.store.list_uploads(self.bucket) if u["key"].startswith(prefix)]
        if key_marker:
            ids = [(u["key"], u["upload_id"]) for u in uploads]
            if id_marker and (key_marker, id_marker) in ids:
                uploads = uploads[ids.index((key_marker, id_marker)) + 1:]
            else:
                uploads = [u for u in uploads if u["key"] > key_marker]
        page, truncated = uploads[:max_uploads], len(uploads) > max_uploads
        root = node(None, "ListMultipartUploadsResult")
        for tag, text in (("Bucket", self.bucket), ("KeyMarker", enc(key_marker)), ("UploadIdMarker", id_marker),
                          ("NextKeyMarker", enc(page[-1]["key"]) if truncated else ""),
                          ("NextUploadIdMarker", page[-1]["upload_id"] if truncated else ""),
                          ("Prefix", enc(prefix)), ("MaxUploads", max_uploads), ("IsTruncated", truncated)):
            node(root, tag, text)
        for upload in page:
            entry = node(root, "Upload")
            node(entry, "Key", enc(upload["key"]))
            node(entry, "UploadId", upload["upload_id"])
            for role in ("Initiator", "Owner"):
                person = node(entry, role)
                node(person, "ID", OWNER[0])
                node(person, "DisplayName", OWNER[1])
            node(entry, "StorageClass", "STANDARD")
            node(entry, "Initiated", iso8601(upload["initiated"]))
        self._send_xml(root)

    def op_delete_objects(self) -> None:
        self.store.config(self.bucket)
        request = self._read_xml()
        objects = request.findall("Object")
        if not objects or len(objects) > 1000:
            raise malformed_xml()
        quiet = (request.findtext("Quiet") or "").strip().lower() == "true"
        root = node(None, "DeleteResult")
        for obj in objects:
            key = obj.findtext("Key") or ""
            if not key or len(key.encode()) > 1024:
                error = node(root, "Error")
                for tag, text in (("Key", key), ("Code", "InvalidArgument"), ("Message", "Invalid key")):
                    node(error, tag, text)
                continue
            self.store.delete_object(self.bucket, key)
            if not quiet:
                node(node(root, "Deleted"), "Key", key)
        self._send_xml(root)

    # -- object operations -----------------------------------------------------------------
    def op_get_object(self) -> None:
        """GetObject and HeadObject, with single byte ranges and conditional headers."""
        opened = self.store.open_object(self.bucket, self.key)
        if opened is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.", self.resource)
        meta, data = opened
        with data:
            self._check_conditions(meta)
            headers, size = self._object_headers(meta), meta["size"]
            span = self._parse_range(size)
            first, last = span or (0, size - 1)
            if span:
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            length = max(0, last - first + 1)
            self._start_response(206 if span else 200, headers, length)
            if self.command == "HEAD":
                return
            data.seek(first)
            while length > 0:
                chunk = data.read(min(CHUNK, length))
                if not chunk:
                    self.close_connection = True  # the file shrank underneath us; the body is short
                    break
                self.wfile.write(chunk)
                self.sent_bytes += len(chunk)
                length -= len(chunk)

    def op_put_object(self) -> None:
        """PutObject, or CopyObject when x-amz-copy-source is present."""
        if "x-amz-copy-source" in self.headers:
            return self.op_copy_object()
        sse = self._request_sse(self.store.config(self.bucket))
        tmp = self.store.temp_path()
        try:
            size, md5 = self._receive(tmp)
            meta = {"key": self.key, "size": size, "etag": f'"{md5}"', "mtime": time.time(),
                    **self._request_object_fields(), **sse}
            self.store.commit_object(self.bucket, self.key, tmp, meta,
                                     if_absent=self.headers.get("If-None-Match", "").strip() == "*")
        finally:
            tmp.unlink(missing_ok=True)
        self._send(200, headers={"ETag": meta["etag"], **sse_headers(meta)})

    def op_copy_object(self) -> None:
        """CopyObject: stream the source into a new file; COPY or REPLACE the metadata."""
        sse = self._request_sse(self.store.config(self.bucket))
        replace = self.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
        src_bucket, src_key, meta, data = self._open_copy_source()
        with data:
            if (src_bucket, src_key) == (self.bucket, self.key) and not replace \
                    and "x-amz-server-side-encryption" not in self.headers:
                raise S3Error(400, "InvalidRequest", "This copy request is illegal because it is trying to "
                              "copy an object to itself without changing the object's metadata, storage "
                              "class, website redirect location or encryption attributes.", self.resource)
            tmp = self.store.temp_path()
            try:
                md5 = copy_range(data, tmp, 0, meta["size"])
                fields = self._request_object_fields() if replace else {}
                new = {**meta, **fields, "key": self.key, "etag": f'"{md5}"', "mtime": time.time(), **sse}
                new.pop("parts", None)
                self.store.commit_object(self.bucket, self.key, tmp, new)
            finally:
                tmp.unlink(missing_ok=True)
        root = node(None, "CopyObjectResult")
        node(root, "LastModified", iso8601(new["mtime"]))
        node(root, "ETag", new["etag"])
        self._send_xml(root, sse_headers(new))

    def op_delete_object(self) -> None:
        self.store.config(self.bucket)
        self.store.delete_object(self.bucket, self.key)
        self._send(204)

    # -- multipart uploads -------------------------------------------------------------------
    def op_create_upload(self) -> None:
        sse = self._request_sse(self.store.config(self.bucket))
        meta = {"key": self.key, "initiated": time.time(), **self._request_object_fields(), **sse}
        upload_id = self.store.create_upload(self.bucket, meta)
        root = node(None, "InitiateMultipartUploadResult")
        for tag, text in (("Bucket", self.bucket), ("Key", self.key), ("UploadId", upload_id)):
            node(root, tag, text)
        self._send_xml(root, sse_headers(meta))

    def op_upload_part(self) -> None:
        """UploadPart (body) and UploadPartCopy (x-amz-copy-source, optional range)."""
        path, upload = self.store.upload(self.bucket, self.key, self.query["uploadId"])
        try:
            number = int(self.query.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, "
                          "inclusive", "partNumber")
        copying = "x-amz-copy-source" in self.headers
        tmp = self.store.temp_path()
        try:
            if copying:
                _, _, meta, data = self._open_copy_source()
                with data:
                    m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("x-amz-copy-source-range", ""))
                    first, last = (int(m[1]), int(m[2])) if m else (0, meta["size"] - 1)
                    if first > last or last >= meta["size"]:
                        raise S3Error(400, "InvalidArgument", "The x-amz-copy-source-range value must be of "
                                      "the form bytes=first-last within the source object")
                    size, md5 = last - first + 1, copy_range(data, tmp, first, last - first + 1)
            else:
                size, md5 = self._receive(tmp)
            info = {"part": number, "size": size, "etag": f'"{md5}"', "mtime": time.time()}
            self.store.commit_part(path, tmp, info)
        finally:
            tmp.unlink(missing_ok=True)
        if copying:
            root = node(None, "CopyPartResult")
            node(root, "LastModified", iso8601(info["mtime"]))
            node(root, "ETag", info["etag"])
            return self._send_xml(root, sse_headers(upload))
        self._send(200, headers={"ETag": info["etag"], **sse_headers(upload)})

    def op_list_parts(self) -> None:
        path, _ = self.store.upload(self.bucket, self.key, self.query["uploadId"])
        marker = self._int_query("part-number-marker", 0, high=10000)
        max_parts = self._int_query("max-parts", 1000)
        parts = [p for p in self.store.parts(path) if p["part"] > marker]
        page, truncated = parts[:max_parts], len(parts) > max_parts
        root = node(None, "ListPartsResult")
        for tag, text in (("Bucket", self.bucket), ("Key", self.key), ("UploadId", self.query["uploadId"]),
                          ("PartNumberMarker", marker), ("NextPartNumberMarker", page[-1]["part"] if page else 0),
                          ("MaxParts", max_parts), ("IsTruncated", truncated), ("StorageClass", "STANDARD")):
            node(root, tag, text)
        for part in page:
            entry = node(root, "Part")
            for tag, text in (("PartNumber", part["part"]), ("LastModified", iso8601(part["mtime"])),
                              ("ETag", part["etag"]), ("Size", part["size"])):
                node(entry, tag, text)
        self._send_xml(root)

    def op_complete_upload(self) -> None:
        """Validate the part list, concatenate the part files into the object, drop the upload."""
        path, upload = self.store.upload(self.bucket, self.key, self.query["uploadId"])
        requested: list[tuple[int, str]] = []
        for part in self._read_xml().findall("Part"):
            try:
                requested.append((int(part.findtext("PartNumber") or ""), (part.findtext("ETag") or "").strip()))
            except ValueError:
                raise malformed_xml() from None
        if not requested:
            raise malformed_xml()
        if any(b[0] <= a[0] for a, b in zip(requested, requested[1:])):
            raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order. The parts "
                          "list must be specified in order by part number.", self.resource)
        stored = {p["part"]: p for p in self.store.parts(path)}
        for number, etag in requested:
            if number not in stored or stored[number]["etag"].strip('"') != etag.strip('"'):
                raise S3Error(400, "InvalidPart", "One or more of the specified parts could not be found. "
                              "The part may not have been uploaded, or the specified entity tag may not "
                              "match the part's entity tag.", self.resource)
        if any(stored[number]["size"] < MIN_PART_SIZE for number, _ in requested[:-1]):
            raise S3Error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed "
                          "object size.", self.resource)
        digest = hashlib.md5(b"".join(bytes.fromhex(stored[n]["etag"].strip('"')) for n, _ in requested))
        meta = {name: upload.get(name) for name in ("content_type", "metadata", "headers", "sse", "kms_key_id")}
        meta.update(key=self.key, size=sum(stored[n]["size"] for n, _ in requested), mtime=time.time(),
                    etag=f'"{digest.hexdigest()}-{len(requested)}"', parts=len(requested))
        tmp = self.store.temp_path()
        try:
            with open(tmp, "wb", buffering=0) as out:
                for number, _ in requested:
                    try:
                        append_file(path / f"part-{number:05d}.data", out)
                    except FileNotFoundError:
                        raise no_such_upload(path.name) from None
            self.store.commit_object(self.bucket, self.key, tmp, meta)
        finally:
            tmp.unlink(missing_ok=True)
        self.store.remove_upload(path)
        root = node(None, "CompleteMultipartUploadResult")
        host = self.headers.get("Host", "localhost")
        for tag, text in (("Location", f"http://{host}/{self.bucket}/{quote(self.key)}"),
                          ("Bucket", self.bucket), ("Key", self.key), ("ETag", meta["etag"])):
            node(root, tag, text)
        self._send_xml(root, sse_headers(meta))

    def op_abort_upload(self) -> None:
        path, _ = self.store.upload(self.bucket, self.key, self.query["uploadId"])
        self.store.remove_upload(path)
        self._send(204)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="directory that holds all state")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=59000, help="0 picks a free port (logged)")
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--bucket", action="append", default=[], help="create at start (repeatable)")
    parser.add_argument("--pid-file", type=Path)
    parser.add_argument("--log-file", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        filename=str(args.log_file) if args.log_file else None)
    store = Storage(args.root)
    for bucket in args.bucket:
        if not BUCKET_RE.match(bucket):
            raise SystemExit(f"invalid bucket name: {bucket!r}")
        store.create_bucket(bucket)
    server = S3Server((args.host, args.port), store, args.access_key, args.secret_key)
    if args.pid_file:
        tmp = args.pid_file.with_name(args.pid_file.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, args.pid_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    log.info("s3server listening on http://%s:%d root=%s", *server.server_address[:2], args.root)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        if args.pid_file:
            args.pid_file.unlink(missing_ok=True)
        log.info("s3server stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
