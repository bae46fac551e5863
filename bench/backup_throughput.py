#!/usr/bin/env python3
"""Backup throughput and memory: our streamed backup against pg_dump alone and pg_dump | aws s3 cp.

Not part of the test suite (it moves gigabytes). Run it on the local stack:

    . .devstack/env && PYTHONPATH=plugins .venv/bin/python bench/backup_throughput.py [--size-gb 1.0]

What it does, for a database whose custom-format dump is >= `--size-gb` ("big") and one
10x smaller ("small"):

1. builds the database once and reuses it on later runs (`bench_backup_big`,
   `bench_backup_small` on the staging cluster; `--drop` removes them). The data is the
   generator's demo preset plus `bench_payload`, rows of random base64 text (~1.4 kB each)
   drawn from a 2.8 MB pool: the fastest way found to a 1 GB dump. zlib's 32 kB window
   cannot reach back to a repeated pool entry, so the dump is ~75% of the text (base64's
   6 bits per byte), and one INSERT ... SELECT writes it in about a minute. The table is UNLOGGED (no WAL
   while building; pg_dump dumps unlogged data like any other);
2. measures, one after the other, the wall time and peak RSS of
   - floor:   `pg_dump -Fc > /dev/null`
   - awscli:  `pg_dump -Fc | aws s3 cp - s3://…` (awscli in a throwaway venv under /tmp,
              same endpoint, SSE AES256)
   - ours:    `schema_deploy.backups.dump.backup()` in its own Python process (snapshot, row
              counts, multipart upload, sha256, manifest)
   - raw:     the same bytes (the dump, saved once to a file) uploaded by our multipart
              code without pg_dump: if this is close to `ours`, the endpoint is the limit
   Peak RSS is the measured program's: each runs under a small wrapper that reports
   `getrusage(RUSAGE_CHILDREN).ru_maxrss` (the largest process of its tree: the uploader,
   not pg_dump, in the pipelines);
3. prints the figures and the ratios against their targets: ours/floor <= 1.10,
   ours/awscli <= 1.0, ours peak RSS <= 150 MB, RSS big/small within 20%.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack")]

AWSCLI_VENV = Path("/tmp/schema-deploy-bench-awscli")
DUMP_BYTES_PER_ROW = 1070  # measured: one bench_payload row adds ~1,070 bytes to the -Fc dump
# Runs argv[2:], then writes its exit code and the peak RSS of its process tree to fd argv[1].
WRAPPER = """
import json, os, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
with os.fdopen(int(sys.argv[1]), "w") as out:
    json.dump({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, out)
"""
OURS = """
import json, os, sys
from schema_deploy.backups.dump import backup
from schema_deploy.backups.store import default_s3_client
r = backup(default_s3_client(), sys.argv[1], sys.argv[2], environment="bench", run_id=sys.argv[3],
           pg_bindir=os.environ["PG_BINDIR"], log=lambda m: print(m, file=sys.stderr, flush=True))
print(json.dumps({"size": r.size, "parts": r.parts, "uri": r.uri}))
"""
RAW = """
import os, sys
from schema_deploy.backups.dump import MultipartStream
from schema_deploy.backups.store import Sse, default_s3_client
s = MultipartStream(default_s3_client(), sys.argv[2], sys.argv[3], Sse())
s.start()
with open(sys.argv[1], "rb", buffering=0) as f:
    s.pump(f)
s.complete()
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def pg_env(url: str) -> tuple[list[str], dict[str, str]]:
    parts = urlsplit(url)
    env = dict(os.environ, PGPASSWORD=parts.password or "")
    return ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "",
            "-d", parts.path.lstrip("/")], env


# --- the databases ---------------------------------------------------------------------

def ensure_database(base: str, name: str, rows: int) -> str:
    """Create (or reuse) a database with the demo data plus `rows` payload rows."""
    url = with_db(base, name)
    try:
        with psycopg.connect(url) as conn:
            have = conn.execute("SELECT count(*) FROM bench_payload").fetchone()[0]
        if have == rows:
            log(f"reusing {name} ({rows:,} payload rows)")
            return url
        log(f"{name} has {have:,} payload rows, want {rows:,}: rebuilding")
    except psycopg.Error:
        pass
    from generate_data import generate

    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.engine.apply import apply

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    started = time.monotonic()
    apply(url, load_bundle(REPO / "sql" / "migrations"), to="20250915090000_baseline")
    generate(url, seed=42, scale="demo")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            CREATE UNLOGGED TABLE bench_payload AS
            WITH pool AS (SELECT p, encode(decode(string_agg(md5(random()::text || p || h), ''), 'hex'), 'base64') AS b
                          FROM generate_series(0, 2047) p, generate_series(1, 64) h GROUP BY p)
            SELECT g AS id, pool.b AS payload FROM generate_series(1, %s) g
            JOIN pool ON pool.p = (g * 2654435761::bigint) %% 2048""", (rows,))
        conn.execute("ALTER TABLE bench_payload ADD PRIMARY KEY (id)")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    log(f"built {name}: {rows:,} payload rows, {size / 1e9:.2f} GB on disk, {time.monotonic() - started:.0f} s")
    return url


# --- measuring ---------------------------------------------------------------------------

def measured(argv: list[str], *, stdin=None, stdout=subprocess.DEVNULL,
             env: dict[str, str] | None = None) -> dict:
    """Run `argv` under the rusage wrapper: wall seconds, peak RSS (MB) and stdout."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(write_fd), *argv], stdin=stdin, stdout=stdout,
                            env=env, pass_fds=(write_fd,))
    os.close(write_fd)
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait()
    seconds = time.monotonic() - started
    with os.fdopen(read_fd) as f:
        data = json.loads(f.read())
    if data["rc"] != 0:
        raise SystemExit(f"{shlex.join(argv[:3])}… failed with exit code {data['rc']}")
    return {"seconds": seconds, "rss_mb": data["maxrss_kb"] / 1024, "stdout": out}


def floor(url: str, pg_dump: str) -> dict:
    args, env = pg_env(url)
    return measured([pg_dump, "-Fc", *args], env=env)


def via_awscli(url: str, pg_dump: str, aws: str, uri: str, env_aws: dict[str, str]) -> dict:
    args, env = pg_env(url)
    started = time.monotonic()
    dump = subprocess.Popen([pg_dump, "-Fc", *args], stdout=subprocess.PIPE, env=env)
    assert dump.stdout is not None
    try:
        result = measured([aws, "s3", "cp", "--only-show-errors", "--sse", "AES256", "-", uri],
                          stdin=dump.stdout, env=env_aws)
    finally:
        dump.stdout.close()
    if dump.wait() != 0:
        raise SystemExit("pg_dump failed under awscli")
    return {**result, "seconds": time.monotonic() - started}


def ours(url: str, to: str, run_id: str) -> dict:
    result = measured([sys.executable, "-c", OURS, url, to, run_id], stdout=subprocess.PIPE,
                      env=dict(os.environ, PYTHONPATH=str(REPO / "plugins")))
    return {**result, **json.loads(result["stdout"].strip().splitlines()[-1])}


def raw_upload(path: Path, bucket: str, key: str) -> dict:
    return measured([sys.executable, "-c", RAW, str(path), bucket, key],
                    env=dict(os.environ, PYTHONPATH=str(REPO / "plugins")))


def install_awscli() -> str:
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        log(f"installing awscli into {AWSCLI_VENV} (throwaway venv)")
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", "awscli"], check=True)
    return str(aws)


def awscli_env(tmp: Path) -> dict[str, str]:
    config = tmp / "aws-config"
    config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    return dict(os.environ, AWS_CONFIG_FILE=str(config))


# --- the run -------------------------------------------------------------------------------

def run_size(label: str, url: str, bucket: str, prefix: str, pg_dump: str, aws: str, aws_env: dict[str, str],
             tmp: Path, s3) -> dict:
    log(f"== {label}: floor (pg_dump -Fc > /dev/null)")
    f = floor(url, pg_dump)
    log(f"   {f['seconds']:.1f} s")
    log(f"== {label}: pg_dump | aws s3 cp -")
    a = via_awscli(url, pg_dump, aws, f"s3://{bucket}/{prefix}/awscli-{label}.dump",
                   dict(aws_env, AWS_ENDPOINT_URL=os.environ["AWS_ENDPOINT_URL"]))
    log(f"   {a['seconds']:.1f} s")
    log(f"== {label}: ours")
    o = ours(url, f"s3://{bucket}/{prefix}", f"ours-{label}")
    log(f"   {o['seconds']:.1f} s, {o['size'] / 1e9:.3f} GB in {o['parts']} parts")
    log(f"== {label}: raw upload of the same bytes")
    dump_file = tmp / f"{label}.dump"
    with open(dump_file, "wb") as out:
        s3.download_fileobj(bucket, o["uri"].split("/", 3)[3], out)
    r = raw_upload(dump_file, bucket, f"{prefix}/raw-{label}.bin")
    dump_file.unlink()
    log(f"   {r['seconds']:.1f} s")
    return {"size": o["size"], "floor": f, "awscli": a, "ours": o, "raw": r}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("STAGING_DATABASE_URL"),
                        help="a URL on the cluster to build the bench databases on (default $STAGING_DATABASE_URL)")
    parser.add_argument("--bucket", default=os.environ.get("BACKUP_BUCKET"))
    parser.add_argument("--size-gb", type=float, default=1.0, help="dump size of the big database (default 1.0)")
    parser.add_argument("--drop", action="store_true", help="drop the bench databases afterwards")
    args = parser.parse_args(argv)
    if not args.db or not args.bucket or "PG_BINDIR" not in os.environ:
        parser.error("source .devstack/env first (needs STAGING_DATABASE_URL, BACKUP_BUCKET, PG_BINDIR, AWS_*)")

    from schema_deploy.backups.store import default_s3_client

    pg_dump = str(Path(os.environ["PG_BINDIR"]) / "pg_dump")
    big_rows = int(args.size_gb * 1.05e9 / DUMP_BYTES_PER_ROW)
    urls = {"big": ensure_database(args.db, "bench_backup_big", big_rows),
            "small": ensure_database(args.db, "bench_backup_small", big_rows // 10)}
    aws = install_awscli()
    s3 = default_s3_client()
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        aws_env = awscli_env(Path(tmp))
        try:
            for label in ("big", "small"):
                results[label] = run_size(label, urls[label], args.bucket, prefix, pg_dump, aws, aws_env,
                                          Path(tmp), s3)
        finally:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=args.bucket, Key=obj["Key"])
    if args.drop:
        with psycopg.connect(args.db, autocommit=True) as conn:
            for name in ("bench_backup_big", "bench_backup_small"):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')

    print(f"{'':<7} {'dump':>9} {'method':<8} {'wall s':>7} {'MB/s':>7} {'peak RSS MB':>12}")
    for label, res in results.items():
        for method in ("floor", "awscli", "ours", "raw"):
            m = res[method]
            print(f"{label:<7} {res['size'] / 1e6:>7.0f}MB {method:<8} {m['seconds']:>7.1f} "
                  f"{res['size'] / 1e6 / m['seconds']:>7.1f} {m['rss_mb']:>12.1f}")
    big, small = results["big"], results["small"]
    checks = [
        ("ours/floor (big)", big["ours"]["seconds"] / big["floor"]["seconds"], "<= 1.10", lambda v: v <= 1.10),
        ("ours/awscli (big)", big["ours"]["seconds"] / big["awscli"]["seconds"], "<= 1.00", lambda v: v <= 1.0),
        ("ours/floor (small)", small["ours"]["seconds"] / small["floor"]["seconds"], "(info)", lambda v: True),
        ("ours/awscli (small)", small["ours"]["seconds"] / small["awscli"]["seconds"], "(info)", lambda v: True),
        ("raw/ours (big)", big["raw"]["seconds"] / big["ours"]["seconds"],
         "(info: near 1 = the endpoint is the limit)", lambda v: True),
        ("ours peak RSS MB (big)", big["ours"]["rss_mb"], "<= 150", lambda v: v <= 150),
        ("ours peak RSS big/small", big["ours"]["rss_mb"] / small["ours"]["rss_mb"], "0.8 .. 1.2",
         lambda v: 0.8 <= v <= 1.2),
    ]
    print()
    for name, value, target, ok in checks:
        print(f"{name:<26} {value:>8.2f}  target {target:<44} {'ok' if ok(value) else 'MISSED'}")
    return 0 if all(ok(v) for _, v, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
