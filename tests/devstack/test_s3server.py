"""The devstack S3 endpoint (devstack/s3server.py), exercised through boto3 and raw HTTP.

Self-contained: the module starts its own server on a free loopback port with a temporary
root, so it needs neither the local stack nor a conftest fixture.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "devstack" / "s3server.py"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"
BUCKET = "test-bucket"
MIB = 1 << 20


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    pid_file: Path
    log_file: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, root: Path, *buckets: str) -> RunningServer:
    """Start devstack/s3server.py and wait until it answers HTTP."""
    port = free_port()
    pid_file, log_file = workdir / f"s3-{port}.pid", workdir / f"s3-{port}.log"
    cmd = [sys.executable, str(SERVER_SCRIPT), "--root", str(root), "--host", "127.0.0.1",
           "--port", str(port), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
           "--pid-file", str(pid_file), "--log-file", str(log_file)]
    for bucket in buckets:
        cmd += ["--bucket", bucket]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"s3server exited at start with {proc.returncode}"
        if pid_file.exists():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/1.1"):
                        return RunningServer(proc, port, root, pid_file, log_file)
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("s3server did not answer within 20 s")


def stop_server(server: RunningServer) -> int:
    server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=15)


def make_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=5, read_timeout=60, max_pool_connections=16))


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return excinfo.value.response["Error"]["Code"]


def signed_headers(server: RunningServer, method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
    """SigV4-sign a raw request (the payload hash is whatever x-amz-content-sha256 says)."""
    request = AWSRequest(method=method, url=server.endpoint + path, headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def server_vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


class ReadOnlyStream:
    """A non-seekable stream of deterministic pseudo-random bytes: it has read() and nothing else."""

    def __init__(self, total: int, seed: int = 7) -> None:
        self._block = random.Random(seed).randbytes(MIB)
        self._total, self._pos = total, 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self._total - self._pos if size is None or size < 0 else min(size, self._total - self._pos)
        out = bytearray()
        while len(out) < size:
            offset = (self._pos + len(out)) % MIB
            index = ((self._pos + len(out)) // MIB).to_bytes(8, "big")
            block = index + self._block[8:]  # every MiB differs, so every part differs
            out += block[offset:offset + size - len(out)]
        self._pos += size
        self.sha256.update(out)
        return bytes(out)


def sha256_of_object(s3, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(MIB):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("s3server")
    running = start_server(workdir, workdir / "root", BUCKET)
    yield running
    assert stop_server(running) == 0, "s3server did not exit cleanly on SIGTERM"
    assert not running.pid_file.exists(), "s3server left its pid file behind"


@pytest.fixture(scope="module")
def s3(server: RunningServer):
    return make_client(server.endpoint)


# -- objects -------------------------------------------------------------------------------

def test_put_then_get_returns_the_body_metadata_and_content_type(s3) -> None:
    key = "dir with space/ünïcode+plus.txt"
    put = s3.put_object(Bucket=BUCKET, Key=key, Body=b"hello world", ContentType="text/plain",
                        Metadata={"Owner": "schema-deploy", "run": "42"})
    got = s3.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == b"hello world"
    assert got["ContentType"] == "text/plain"
    assert got["ContentLength"] == 11
    assert got["Metadata"] == {"owner": "schema-deploy", "run": "42"}
    assert got["ETag"] == put["ETag"] == '"%s"' % hashlib.md5(b"hello world").hexdigest()
    assert got["LastModified"].year >= 2024


def test_a_range_get_returns_partial_content(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="range.bin", Body=bytes(range(256)))
    part = s3.get_object(Bucket=BUCKET, Key="range.bin", Range="bytes=10-19")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == "bytes 10-19/256"
    assert part["Body"].read() == bytes(range(10, 20))
    tail = s3.get_object(Bucket=BUCKET, Key="range.bin", Range="bytes=250-")
    assert tail["Body"].read() == bytes(range(250, 256))
    suffix = s3.get_object(Bucket=BUCKET, Key="range.bin", Range="bytes=-3")
    assert suffix["Body"].read() == bytes([253, 254, 255])


def test_a_range_past_the_end_is_invalid_range(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="short.bin", Body=b"abc")
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=BUCKET, Key="short.bin", Range="bytes=10-20")
    assert error_code(excinfo) == "InvalidRange"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_head_on_a_missing_key_is_404(s3) -> None:
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=BUCKET, Key="does/not/exist")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_get_on_a_missing_key_is_no_such_key_and_a_missing_bucket_is_no_such_bucket(s3) -> None:
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=BUCKET, Key="nope")
    assert error_code(excinfo) == "NoSuchKey"
    with pytest.raises(ClientError) as excinfo:
        s3.list_objects_v2(Bucket="no-such-bucket")
    assert error_code(excinfo) == "NoSuchBucket"


def test_a_content_md5_mismatch_is_bad_digest_and_stores_nothing(s3) -> None:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key="bad-md5", Body=b"payload", ContentMD5=wrong)
    assert error_code(excinfo) == "BadDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="bad-md5")


def test_an_empty_object_round_trips(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="empty", Body=b"")
    got = s3.get_object(Bucket=BUCKET, Key="empty")
    assert (got["ContentLength"], got["Body"].read()) == (0, b"")


def test_conditional_requests_honour_if_match_and_if_none_match(s3) -> None:
    etag = s3.put_object(Bucket=BUCKET, Key="cond", Body=b"v1")["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="cond", IfMatch=etag)["Body"].read() == b"v1"
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=BUCKET, Key="cond", IfMatch='"0123"')
    assert error_code(excinfo) == "PreconditionFailed"
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=BUCKET, Key="cond", IfNoneMatch=etag)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key="cond", Body=b"v2", IfNoneMatch="*")
    assert error_code(excinfo) == "PreconditionFailed"
    assert s3.get_object(Bucket=BUCKET, Key="cond")["Body"].read() == b"v1"


def test_a_transfer_encoding_chunked_body_is_accepted(server: RunningServer, s3) -> None:
    path = f"/{BUCKET}/http-chunked.txt"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("PUT", path, body=iter([b"first,", b"second"]), encode_chunked=True,
                 headers=signed_headers(server, "PUT", path, {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}))
    response = conn.getresponse()
    assert response.status == 200, response.read()
    conn.close()
    assert s3.get_object(Bucket=BUCKET, Key="http-chunked.txt")["Body"].read() == b"first,second"


def test_copy_object_copies_or_replaces_metadata(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="copy/src", Body=b"copied bytes", ContentType="text/csv",
                  Metadata={"a": "1"})
    s3.copy_object(Bucket=BUCKET, Key="copy/same", CopySource={"Bucket": BUCKET, "Key": "copy/src"})
    same = s3.head_object(Bucket=BUCKET, Key="copy/same")
    assert (same["ContentType"], same["Metadata"]) == ("text/csv", {"a": "1"})
    s3.copy_object(Bucket=BUCKET, Key="copy/new", CopySource={"Bucket": BUCKET, "Key": "copy/src"},
                   MetadataDirective="REPLACE", ContentType="application/json", Metadata={"b": "2"})
    new = s3.get_object(Bucket=BUCKET, Key="copy/new")
    assert new["Body"].read() == b"copied bytes"
    assert (new["ContentType"], new["Metadata"]) == ("application/json", {"b": "2"})


def test_delete_object_is_204_even_when_missing_and_delete_objects_removes_keys(s3) -> None:
    for key in ("del/a", "del/b"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    assert s3.delete_object(Bucket=BUCKET, Key="del/never")["ResponseMetadata"]["HTTPStatusCode"] == 204
    result = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "del/a"}, {"Key": "del/b"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["del/a", "del/b"]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="del/")["KeyCount"] == 0


def test_an_aws_chunked_body_with_a_crc32_trailer_is_decoded(server: RunningServer, s3) -> None:
    payload = os.urandom(300_000)
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    pieces = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    body += b"0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % crc.encode()
    headers = {"Content-Encoding": "aws-chunked", "Content-Type": "application/x-test",
               "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
               "x-amz-decoded-content-length": str(len(payload)), "x-amz-trailer": "x-amz-checksum-crc32",
               "Content-Length": str(len(body))}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("PUT", f"/{BUCKET}/chunked/object.bin", body=body,
                 headers=signed_headers(server, "PUT", f"/{BUCKET}/chunked/object.bin", headers))
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("ETag") == '"%s"' % hashlib.md5(payload).hexdigest()
    response.read()
    bad = body.replace(crc.encode(), base64.b64encode(b"\0\0\0\0"))
    conn.request("PUT", f"/{BUCKET}/chunked/bad.bin", body=bad,
                 headers=signed_headers(server, "PUT", f"/{BUCKET}/chunked/bad.bin", headers))
    response = conn.getresponse()
    assert response.status == 400 and b"<Code>BadDigest</Code>" in response.read()
    conn.close()
    got = s3.get_object(Bucket=BUCKET, Key="chunked/object.bin")
    assert got["Body"].read() == payload
    assert got["ContentType"] == "application/x-test" and "ContentEncoding" not in got
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="chunked/bad.bin")


# -- listing --------------------------------------------------------------------------------

@pytest.mark.slow
def test_list_v2_pages_through_prefixes_and_delimiters(s3) -> None:
    keys = [f"many/k-{i:05d}" for i in range(1100)] + ["many/sub/x", "many/sub/y", "many/zz/1", "other/1"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=BUCKET, Key=k, Body=b"."), keys))
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="many/"))
    assert [p["KeyCount"] for p in pages] == [1000, 103]
    assert pages[0]["IsTruncated"] and not pages[1]["IsTruncated"]
    listed = [o["Key"] for p in pages for o in p["Contents"]]
    assert listed == sorted(k for k in keys if k.startswith("many/"))
    assert pages[0]["Contents"][0]["Size"] == 1
    tree = s3.list_objects_v2(Bucket=BUCKET, Prefix="many/", Delimiter="/", StartAfter="many/k-01000")
    assert [c["Prefix"] for c in tree["CommonPrefixes"]] == ["many/sub/", "many/zz/"]
    assert len(tree["Contents"]) == 99 and tree["KeyCount"] == 101 and not tree["IsTruncated"]
    small = s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="many/", Delimiter="/", StartAfter="many/k-01098", PaginationConfig={"PageSize": 2})
    items = [(o["Key"] if "Key" in o else o["Prefix"]) for p in small
             for o in p.get("Contents", []) + p.get("CommonPrefixes", [])]
    assert sorted(items) == ["many/k-01099", "many/sub/", "many/zz/"]
    top = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
    assert {"many/", "other/"} <= {c["Prefix"] for c in top["CommonPrefixes"]}
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket=BUCKET, Prefix="many/k-"))
    assert sum(len(p["Contents"]) for p in v1) == 1100


# -- multipart uploads -------------------------------------------------------------------------

def test_a_multipart_upload_from_a_non_seekable_stream_round_trips(s3) -> None:
    stream = ReadOnlyStream(20 * MIB + 12345)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)
    s3.upload_fileobj(stream, BUCKET, "multipart/stream.bin", Config=config)
    head = s3.head_object(Bucket=BUCKET, Key="multipart/stream.bin")
    assert head["ContentLength"] == 20 * MIB + 12345
    assert head["ETag"].endswith('-5"')
    assert sha256_of_object(s3, "multipart/stream.bin") == stream.sha256.hexdigest()


def test_sse_aes256_is_echoed_by_put_and_head(s3) -> None:
    put = s3.put_object(Bucket=BUCKET, Key="sse/aes", Body=b"x", ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    assert s3.head_object(Bucket=BUCKET, Key="sse/aes")["ServerSideEncryption"] == "AES256"


def test_sse_kms_with_a_key_id_is_echoed_for_a_multipart_upload(s3) -> None:
    key_id = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.upload_fileobj(ReadOnlyStream(6 * MIB), BUCKET, "sse/kms", Config=config,
                      ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id})
    head = s3.head_object(Bucket=BUCKET, Key="sse/kms")
    assert head["ETag"].endswith('-2"')
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_id)
    got = s3.get_object(Bucket=BUCKET, Key="sse/kms", Range="bytes=0-0")
    assert (got["ServerSideEncryption"], got["SSEKMSKeyId"]) == ("aws:kms", key_id)


def test_an_object_put_without_sse_reports_the_bucket_default_aes256(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="sse/none", Body=b"x")
    assert s3.head_object(Bucket=BUCKET, Key="sse/none")["ServerSideEncryption"] == "AES256"


def test_an_unsupported_sse_value_is_invalid_argument(s3) -> None:
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key="sse/bogus", Body=b"x", ServerSideEncryption="ROT13")
    assert error_code(excinfo) == "InvalidArgument"


def test_a_started_upload_is_listed_and_an_aborted_one_is_gone_without_an_object(s3) -> None:
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="mpu/aborted.bin")
    upload_id = upload["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="mpu/aborted.bin", UploadId=upload_id, PartNumber=1, Body=b"a" * 1000)
    listed = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="mpu/")
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == [("mpu/aborted.bin", upload_id)]
    assert listed["Uploads"][0]["Initiated"].year >= 2024
    parts = s3.list_parts(Bucket=BUCKET, Key="mpu/aborted.bin", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 1000)]
    aborted = s3.abort_multipart_upload(Bucket=BUCKET, Key="mpu/aborted.bin", UploadId=upload_id)
    assert aborted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET, Prefix="mpu/")
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=BUCKET, Key="mpu/aborted.bin")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as excinfo:
        s3.abort_multipart_upload(Bucket=BUCKET, Key="mpu/aborted.bin", UploadId=upload_id)
    assert error_code(excinfo) == "NoSuchUpload"


def test_completing_with_a_too_small_first_part_is_entity_too_small(s3) -> None:
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key="mpu/small.bin")["UploadId"]
    etags = [s3.upload_part(Bucket=BUCKET, Key="mpu/small.bin", UploadId=upload_id, PartNumber=n,
                            Body=b"x" * 100)["ETag"] for n in (1, 2)]
    parts = [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]
    with pytest.raises(ClientError) as excinfo:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="mpu/small.bin", UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})
    assert error_code(excinfo) == "EntityTooSmall"
    with pytest.raises(ClientError) as excinfo:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="mpu/small.bin", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"%s"' % ("0" * 32)}]})
    assert error_code(excinfo) == "InvalidPart"
    with pytest.raises(ClientError) as excinfo:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="mpu/small.bin", UploadId=upload_id,
                                     MultipartUpload={"Parts": parts[::-1]})
    assert error_code(excinfo) == "InvalidPartOrder"
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key="mpu/small.bin", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts[:1]})
    assert done["ETag"].endswith('-1"')
    assert s3.get_object(Bucket=BUCKET, Key="mpu/small.bin")["Body"].read() == b"x" * 100


def test_an_unknown_upload_id_is_no_such_upload(s3) -> None:
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(Bucket=BUCKET, Key="mpu/x", UploadId="0" * 32, PartNumber=1, Body=b"x")
    assert error_code(excinfo) == "NoSuchUpload"


@pytest.mark.slow
def test_uploads_survive_a_server_restart(tmp_path: Path) -> None:
    first = start_server(tmp_path, tmp_path / "root", "restart-bucket")
    client = make_client(first.endpoint)
    upload_id = client.create_multipart_upload(Bucket="restart-bucket", Key="k")["UploadId"]
    etag = client.upload_part(Bucket="restart-bucket", Key="k", UploadId=upload_id, PartNumber=1,
                              Body=b"survivor")["ETag"]
    assert stop_server(first) == 0
    second = start_server(tmp_path, tmp_path / "root", "restart-bucket")
    try:
        client = make_client(second.endpoint)
        assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket="restart-bucket")["Uploads"]] \
            == [upload_id]
        client.complete_multipart_upload(Bucket="restart-bucket", Key="k", UploadId=upload_id,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        assert client.get_object(Bucket="restart-bucket", Key="k")["Body"].read() == b"survivor"
    finally:
        assert stop_server(second) == 0


# -- authentication -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_wrong_secret_key_is_signature_does_not_match(server: RunningServer) -> None:
    with pytest.raises(ClientError) as excinfo:
        make_client(server.endpoint, secret_key="not-the-secret").list_objects_v2(Bucket=BUCKET)
    assert error_code(excinfo) == "SignatureDoesNotMatch"


def test_an_unknown_access_key_is_invalid_access_key_id(server: RunningServer) -> None:
    with pytest.raises(ClientError) as excinfo:
        make_client(server.endpoint, access_key="AKIDUNKNOWN").list_buckets()
    assert error_code(excinfo) == "InvalidAccessKeyId"


def test_a_request_without_authentication_is_access_denied(server: RunningServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/{BUCKET}?list-type=2")
    response = conn.getresponse()
    assert response.status == 403 and b"<Code>AccessDenied</Code>" in response.read()
    conn.close()


# -- bucket configuration -------------------------------------------------------------------------

def test_a_new_bucket_blocks_public_access_with_all_four_flags(s3) -> None:
    config = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert config == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                      "BlockPublicPolicy": True, "RestrictPublicBuckets": True}


def test_bucket_encryption_defaults_to_aes256(s3) -> None:
    rules = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_bucket_lifecycle_and_configuration_round_trips(s3) -> None:
    s3.create_bucket(Bucket="scratch-bucket")
    with pytest.raises(ClientError) as excinfo:
        s3.create_bucket(Bucket="scratch-bucket")
    assert error_code(excinfo) == "BucketAlreadyOwnedByYou"
    assert "scratch-bucket" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.put_public_access_block(Bucket="scratch-bucket", PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": False, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": False})
    pab = s3.get_public_access_block(Bucket="scratch-bucket")["PublicAccessBlockConfiguration"]
    assert (pab["IgnorePublicAcls"], pab["BlockPublicPolicy"]) == (False, True)
    s3.delete_public_access_block(Bucket="scratch-bucket")
    with pytest.raises(ClientError) as excinfo:
        s3.get_public_access_block(Bucket="scratch-bucket")
    assert error_code(excinfo) == "NoSuchPublicAccessBlockConfiguration"
    s3.put_bucket_encryption(Bucket="scratch-bucket", ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/backups"}}]})
    s3.put_object(Bucket="scratch-bucket", Key="k", Body=b"x")
    head = s3.head_object(Bucket="scratch-bucket", Key="k")
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "alias/backups")
    s3.delete_bucket_encryption(Bucket="scratch-bucket")
    rules = s3.get_bucket_encryption(Bucket="scratch-bucket")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_location(Bucket="scratch-bucket")["LocationConstraint"] is None
    assert "Status" not in s3.get_bucket_versioning(Bucket="scratch-bucket")
    s3.head_bucket(Bucket="scratch-bucket")
    with pytest.raises(ClientError) as excinfo:
        s3.delete_bucket(Bucket="scratch-bucket")
    assert error_code(excinfo) == "BucketNotEmpty"
    s3.delete_object(Bucket="scratch-bucket", Key="k")
    s3.delete_bucket(Bucket="scratch-bucket")
    with pytest.raises(ClientError) as excinfo:
        s3.head_bucket(Bucket="scratch-bucket")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_an_unimplemented_operation_is_not_implemented(s3) -> None:
    with pytest.raises(ClientError) as excinfo:
        s3.get_bucket_tagging(Bucket=BUCKET)
    assert error_code(excinfo) == "NotImplemented"
    assert "GetBucketTagging" in excinfo.value.response["Error"]["Message"]


# -- robustness -----------------------------------------------------------------------------------

def test_a_client_killed_mid_upload_leaves_no_object_and_the_server_stays_healthy(
        server: RunningServer, s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="killed/existing", Body=b"old contents")
    tmp_dir = server.root / "tmp"
    # The server is shared by the module: a body another test left in flight is not this test's.
    others = set(tmp_dir.iterdir())
    for key in ("killed/new", "killed/existing"):
        path = f"/{BUCKET}/{key}"
        headers = signed_headers(server, "PUT", path, {
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "Content-Length": str(10 * MIB)})
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
            sock.sendall(head.encode() + b"z" * MIB)
    deadline = time.monotonic() + 20
    while set(tmp_dir.iterdir()) - others and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(tmp_dir.iterdir()) - others, "the partial body's temp file was not discarded"
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=BUCKET, Key="killed/new")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.get_object(Bucket=BUCKET, Key="killed/existing")["Body"].read() == b"old contents"
    assert BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]


@pytest.mark.slow
def test_server_memory_stays_flat_during_a_200_mib_multipart_upload(server: RunningServer, s3) -> None:
    size = 200 * MIB
    stream = ReadOnlyStream(size, seed=11)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    started = time.monotonic()
    s3.upload_fileobj(stream, BUCKET, "big/200mib.bin", Config=config)
    elapsed = time.monotonic() - started
    peak_kib = server_vm_hwm_kib(server.proc.pid)
    print(f"\n200 MiB multipart upload: {elapsed:.1f} s, server VmHWM {peak_kib / 1024:.1f} MiB")
    head = s3.head_object(Bucket=BUCKET, Key="big/200mib.bin")
    assert head["ContentLength"] == size and head["ETag"].endswith('-25"')
    assert peak_kib < 80 * 1000, f"server peak RSS {peak_kib} KiB"
    assert sha256_of_object(s3, "big/200mib.bin") == stream.sha256.hexdigest()
    assert server_vm_hwm_kib(server.proc.pid) < 80 * 1000
