#!/usr/bin/env python3
"""The boto3 peer of scripts/bench/bench-store.sh and scripts/bench/bench.py: the same bytes to the same S3 server, timed in-process."""
import json, os, resource, statistics, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
mode, endpoint, ak, sk, bucket = sys.argv[1:6]
cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 3},
             max_pool_connections=32, read_timeout=300,
             request_checksum_calculation="when_required", response_checksum_validation="when_required")
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
                  region_name="us-east-1", config=cfg)
if mode == "mkbucket":
    s3.create_bucket(Bucket=bucket)
    sys.exit(0)
if mode == "count":  # count PREFIX LISTING: objects under PREFIX (their keys and sizes into LISTING)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=sys.argv[6]):
        keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    open(sys.argv[7], "w").write("".join(f"{k} {n}\n" for k, n in keys))
    print(len(keys))
    sys.exit(0)
# up|down|puts|gets ... ARCHIVE KEY RUNS WARMUP SERVER_PID NAME OUT_JSON [CONCURRENCY]
# up/down: upload_file / download_file of one object (multipart, ranged GETs); puts/gets: the archive as 8 MiB
# objects KEY/NNNNN, one PutObject / GetObject each, CONCURRENCY threads (our layout's request pattern).
archive, key, runs, warmup, pid, name, out = sys.argv[6], sys.argv[7], int(sys.argv[8]), int(sys.argv[9]), sys.argv[10], sys.argv[11], sys.argv[12]
threads = int(sys.argv[13]) if len(sys.argv) > 13 else 8
tc = TransferConfig(max_concurrency=threads, multipart_chunksize=8 << 20, multipart_threshold=8 << 20)
def server_cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
from concurrent.futures import ThreadPoolExecutor
size, part = os.path.getsize(archive), 8 << 20
def put_part(n):
    with open(archive, "rb") as f:
        f.seek(n * part)
        s3.put_object(Bucket=bucket, Key=f"{key}/{n:05d}", Body=f.read(part))
def get_part(n):
    body = s3.get_object(Bucket=bucket, Key=f"{key}/{n:05d}")["Body"]
    while body.read(1 << 20):
        pass
def parts(fn):
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range((size + part - 1) // part)))
def client_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
times, ccpu, scpu = [], [], []
for i in range(warmup + runs):
    if mode in ("up", "puts"):
        with open(archive, "rb") as f:  # warm the archive's cache, as the puts warm the dataset
            while f.read(8 << 20):
                pass
    os.sync()
    c0, s0, t0 = client_cpu(), server_cpu(), time.perf_counter()
    if mode == "up":
        s3.upload_file(archive, bucket, key, Config=tc)
    elif mode == "puts":
        parts(put_part)
    elif mode == "gets":
        parts(get_part)
    else:
        with open("/dev/null", "wb") as sink:
            s3.download_fileobj(bucket, key, sink, Config=tc)
    t = time.perf_counter() - t0
    if i >= warmup:
        times.append(t); ccpu.append(client_cpu() - c0); scpu.append(server_cpu() - s0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
json.dump({"results": [{"command": name, "median": statistics.median(times), "mean": statistics.mean(times),
                        "times": times, "client_cpu": statistics.mean(ccpu), "server_cpu": statistics.mean(scpu),
                        "rss_kb": rss, "timed": "in-process (interpreter start excluded)"}]}, open(out, "w"))
