#!/usr/bin/env python3
"""The benchmark matrix (run it through scripts/bench/bench.sh, which builds and provides matplotlib and boto3).

Ours: {STDOUT, FIFO 1, 2, 4, 8} x {drain to /dev/null, extract, put file://, put s3://} x {no compression, zstd -1},
and the peers on the same bytes in the same run: reading the files (`cat`), a raw pipe, `tar | cat`, `tar | tar`,
`mbstream -c | mbstream -x`, `tar | zstd -1 -T2`, boto3 upload to the same S3 server. Then the emulated link: the
receiver in a network namespace behind a veth pair, every TCP connection capped by an htb class, streams carried
by scripts/transport/stream-over-nc.sh, N = 1, 2, 4, 8.

Writes OUT/results.json (every run), OUT/results.md (the tables) and OUT/throughput.svg (the plot; and a PNG of
it).
"""

import argparse
import atexit
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
PRODUCER, CONSUMER = os.path.join(BIN, "producer"), os.path.join(BIN, "consumer")
LAYOUTS = ["stdout", 1, 2, 4, 8]
KINDS = ["drain", "extract", "put file://", "put s3://"]
COMPRESSIONS = ["none", "zstd"]
S3_KEY, S3_SECRET, S3_BUCKET = "AKIABENCHXBKIT", "bench-xbkit-secret-key", "bench"
NETNS, VETH_TX, VETH_RX, TX_ADDR, RX_ADDR = "xbkit-bench", "xbkit-tx", "xbkit-rx", "10.77.0.1", "10.77.0.2"

cleanups = []  # run in reverse on every exit path


def cleanup():
    while cleanups:
        try:
            cleanups.pop()()
        except Exception as error:  # keep tearing down
            print(f"bench: cleanup: {error}", file=sys.stderr)


def on_signal(signum, _frame):
    print(f"bench: stopped by signal {signum}", file=sys.stderr)
    sys.exit(1)


def sh(command, check=True, **kw):
    """Runs COMMAND with bash in a session of its own; if the benchmark is interrupted, the whole process group
    (the producer, the consumer, the recipes' nc) is stopped with it, not only bash."""
    process = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], start_new_session=True,
                               stdout=kw.get("stdout"), stderr=kw.get("stderr"), env=kw.get("env"),
                               text=kw.get("text", False))
    try:
        out, err = process.communicate()
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(3)
                break
            except subprocess.TimeoutExpired:
                pass
        raise
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    if check and process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command, out, err)
    return result


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------- data


def make_dataset(path, size_mb, seed=42):
    """A deterministic tree of about SIZE_MB MiB: half one big file, 20 medium files, 500 small files of 1-64 KiB
    in nested directories; half the bytes text-like (zstd -1 ~3x), half incompressible. Same arguments, same
    bytes."""
    if os.path.isfile(os.path.join(path, ".complete")):
        return
    shutil.rmtree(path, ignore_errors=True)
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(512)]
    text_block = (" ".join(rng.choice(words) for _ in range(300000)) + "\n").encode()

    def content(n, compressible):
        out = bytearray()
        while len(out) < n:
            piece = min(1 << 20, n - len(out))
            if compressible:
                start = rng.randrange(0, len(text_block) - piece)
                out += text_block[start:start + piece]
            else:
                out += rng.randbytes(piece)
        return bytes(out)

    total = size_mb << 20
    small = [rng.randint(1, 64) << 10 for _ in range(500)]
    big = total // 2
    medium = max(4096, (total - big - sum(small)) // 20)
    os.makedirs(os.path.join(path, "medium"))
    with open(os.path.join(path, "big.ibd"), "wb") as f:
        for i in range((big + (1 << 20) - 1) >> 20):
            f.write(content(min(1 << 20, big - (i << 20)), i % 2 == 0))
    for i in range(20):
        with open(os.path.join(path, "medium", f"m{i:02}.ibd"), "wb") as f:
            f.write(content(medium, i % 2 == 0))
    for i, n in enumerate(small):
        sub = os.path.join(path, "small", *[f"d{(i >> s) % 4}" for s in (2, 4, 6)][: i % 4])
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"s{i:04}.dat"), "wb") as f:
            f.write(content(n, i % 2 == 0))
    open(os.path.join(path, "empty.dat"), "wb").close()
    open(os.path.join(path, ".complete"), "wb").close()


def tree_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs if f != ".complete")


def warm(path):
    sh(f"find '{path}' -type f -print0 | xargs -0 cat > /dev/null")


# ---------------------------------------------------------------------------------------------------------- runs


def peak_rss_mib(path):
    try:
        return int(open(path).read().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        return None


def timed(name, command, runs, before=None, after=None, rss=(), env=None, warmup=True):
    """Runs COMMAND (bash) once to warm up (unless not WARMUP) and RUNS times; returns the record with the median
    and the largest peak RSS of each program in RSS (names whose /usr/bin/time -o file the command writes)."""
    record = {"case": name, "command": command, "times": [], "rss_mib": {}}
    first = 1 if warmup else 0
    for i in range(runs + first):
        if before:
            before()
        started = time.perf_counter()
        result = sh(command, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"bench: {name} failed (exit {result.returncode}):\n{command}\n{result.stderr[-3000:]}")
        if i >= first:
            record["times"].append(elapsed)
            for program, path in rss:
                value = peak_rss_mib(path)
                if value is not None:
                    record["rss_mib"][program] = max(value, record["rss_mib"].get(program, 0))
        if after:
            after()
    record["median"] = statistics.median(record["times"])
    log(f"{name}: {record['median']:.3f} s")
    return record


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.out = args.out
        self.dataset = os.path.join(self.work, f"dataset-{args.size_mb}")
        self.target = os.path.join(args.target_root, "xbkit-bench-target")
        self.store = os.path.join(args.target_root, "xbkit-bench-store")
        self.fifo = os.path.join(self.work, "fifo")
        self.s3_root = os.path.join(args.target_root, "xbkit-bench-s3")
        self.records = []
        self.serial = 0
        self.bytes = 0

    # -- setup
    def prepare(self):
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        log(f"dataset: {self.args.size_mb} MiB in {self.dataset}")
        make_dataset(self.dataset, self.args.size_mb)
        self.bytes = tree_bytes(self.dataset)
        self.archive = os.path.join(self.work, f"dataset-{self.args.size_mb}.tar")
        if not os.path.exists(self.archive):
            sh(f"tar -cf '{self.archive}.tmp' -C '{self.dataset}' --exclude=.complete . && mv '{self.archive}.tmp' "
               f"'{self.archive}'")
        warm(self.dataset)

    def start_s3(self):
        shutil.rmtree(self.s3_root, ignore_errors=True)
        os.makedirs(os.path.join(self.s3_root, S3_BUCKET))
        port = free_port()
        log_file = open(os.path.join(self.out, "s3s-fs.log"), "w")
        server = subprocess.Popen(["s3s-fs", "--host", "127.0.0.1", "--port", str(port), "--access-key", S3_KEY,
                                   "--secret-key", S3_SECRET, self.s3_root], stdout=log_file, stderr=log_file)
        self.server = server
        cleanups.append(lambda: (server.terminate(), server.wait(10), shutil.rmtree(self.s3_root, True)))
        self.endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("bench: s3s-fs did not start")
        self.s3_args = (f"--storage s3://{S3_BUCKET}/xbkit --s3-endpoint {self.endpoint} --s3-region us-east-1 "
                        f"--s3-access-key {S3_KEY} --s3-secret-key {S3_SECRET}")

    # -- helpers
    def reset_targets(self):
        for path in (self.target, self.store, self.fifo):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(os.path.join(self.s3_root, S3_BUCKET, "xbkit"), ignore_errors=True)
        shutil.rmtree(os.path.join(self.s3_root, S3_BUCKET, "peer"), ignore_errors=True)
        os.makedirs(self.target)
        os.makedirs(self.store)

    def rss(self, program):
        return os.path.join(self.work, f"rss-{program}")

    def wrap(self, program, command):
        return f"/usr/bin/time -f %M -o {self.rss(program)} {command}"

    def add(self, record, **fields):
        record.update(fields)
        record["mb_per_s"] = self.bytes / record["median"] / 1e6
        self.records.append(record)

    # -- ours
    def ours(self, layout, kind, compression):
        self.serial += 1
        name = f"b{self.serial}"
        produce = f"{PRODUCER} -q --source {self.dataset} --stream=xbstream"
        if compression == "zstd":
            produce += " --compress=zstd --compress-level 1"
        pipes = "" if layout == "stdout" else f" --fifo-streams {layout} --fifo-dir {self.fifo} --fifo-timeout 30"
        produce = self.wrap("producer", produce + pipes)
        consume = {
            "drain": None,
            "extract": f"{CONSUMER} -q extract -C {self.target} --no-fsync",
            "put file://": f"{CONSUMER} -q put NAME --storage file://{self.store}",
            "put s3://": f"{CONSUMER} -q put NAME {self.s3_args}",
        }[kind]
        if consume:
            consume = self.wrap("consumer", consume + pipes)
        if layout == "stdout":
            command = f"{produce} | {consume or 'cat > /dev/null'}"
        elif consume:
            command = f"{consume} & c=$!; {produce}; p=$?; wait $c && exit $p"
        else:
            drains = " ".join(f"(until [ -p {self.fifo}/thread_{i} ]; do sleep 0.01; done; cat {self.fifo}/thread_{i}"
                              f" > /dev/null) &" for i in range(layout))
            command = f"{drains} {produce}; p=$?; wait; exit $p"
        label = "STDOUT" if layout == "stdout" else f"FIFO {layout}"
        # put refuses an existing backup, so every run stores under a new name, read from a file the command
        # reads (timed() runs one fixed command line).
        name_file = os.path.join(self.work, "run-name")
        command = command.replace("NAME", f"$(cat {name_file})")
        runs = [0]

        def before():
            self.reset_targets()
            runs[0] += 1
            with open(name_file, "w") as f:
                f.write(f"{name}-{runs[0]}")
            for program in ("producer", "consumer"):
                if os.path.exists(self.rss(program)):
                    os.remove(self.rss(program))

        rss = [("producer", self.rss("producer"))] + ([("consumer", self.rss("consumer"))] if consume else [])
        record = timed(f"{label} | {kind} | {compression}", command, self.args.runs, before=before, rss=rss)
        self.add(record, group="ours", layout=label, pipes=0 if layout == "stdout" else layout, kind=kind,
                 compression=compression)

    # -- peers
    def peers(self):
        files = f"cd {self.dataset} && find . -type f ! -name .complete -printf '%d %P\\n' | sort -n -s | cut -d' ' -f2-"
        tar = f"tar -cf - -C {self.dataset} --exclude=.complete ."
        cases = [
            ("cat (read the files)", "read", "none", f"find {self.dataset} -type f -print0 | xargs -0 cat > /dev/null"),
            ("raw pipe: cat | cat", "drain", "none", f"find {self.dataset} -type f -print0 | xargs -0 cat | cat > /dev/null"),
            ("tar -c | cat", "drain", "none", f"{tar} | cat > /dev/null"),
            ("tar -c | tar -x", "extract", "none", f"{tar} | tar -xf - -C {self.target}"),
            ("mbstream -c | mbstream -x", "extract", "none",
             f"({files} | xargs mbstream -c) | mbstream -x -C {self.target}"),
            ("tar -c > FILE (file:// dir)", "put file://", "none", f"{tar} > {self.store}/backup.tar"),
            ("tar -c | zstd -1 -T2 | cat", "drain", "zstd", f"{tar} | zstd -q -1 -T2 | cat > /dev/null"),
            ("tar -c | zstd -1 -T2 > FILE (target dir)", "extract", "zstd",
             f"{tar} | zstd -q -1 -T2 > {self.target}/backup.tar.zst"),
            ("tar -c | zstd -1 -T2 > FILE (file:// dir)", "put file://", "zstd",
             f"{tar} | zstd -q -1 -T2 > {self.store}/backup.tar.zst"),
        ]
        for name, kind, compression, command in cases:
            record = timed(name, command, self.args.runs, before=self.reset_targets)
            self.add(record, group="peer", kind=kind, compression=compression)
        if self.args.s3:
            peer = os.path.join(ROOT, "scripts", "bench", "boto3-peer.py")
            pid = self.server.pid
            for mode, name in (("up", "boto3 upload_file, 8 threads"), ("puts", "boto3 put_object x 8 MiB, 8 threads")):
                out = os.path.join(self.work, "boto3.json")
                subprocess.run([sys.executable, peer, mode, self.endpoint, S3_KEY, S3_SECRET, S3_BUCKET,
                                self.archive, f"peer/{mode}", str(self.args.runs), "1", str(pid), name, out],
                               check=True)
                result = json.load(open(out))["results"][0]
                record = {"case": name, "command": f"boto3-peer.py {mode}", "times": result["times"],
                          "median": result["median"], "rss_mib": {"python": result["rss_kb"] / 1024}}
                log(f"{name}: {record['median']:.3f} s")
                self.add(record, group="peer", kind="put s3://", compression="none")
                self.add(dict(record), group="peer", kind="put s3://", compression="zstd")

    # -- the emulated link
    def link(self):
        if os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"):
            log("emulated link skipped: needs root, ip and tc")
            return
        cap, size = self.args.link_cap_mbit, self.args.link_size_mb
        dataset = self.dataset if size == self.args.size_mb else os.path.join(self.work, f"dataset-{size}")
        make_dataset(dataset, size)
        warm(dataset)
        payload = tree_bytes(dataset)
        port = 20000 + random.Random().randrange(0, 20000)
        sh(f"ip netns del {NETNS} 2>/dev/null; ip link del {VETH_TX} 2>/dev/null", check=False)
        cleanups.append(lambda: sh(f"ip netns del {NETNS}; ip link del {VETH_TX} 2>/dev/null", check=False))
        sh(f"""
            ip netns add {NETNS}
            ip link add {VETH_TX} type veth peer name {VETH_RX}
            ip link set {VETH_RX} netns {NETNS}
            ip addr add {TX_ADDR}/24 dev {VETH_TX} && ip link set {VETH_TX} up
            ip netns exec {NETNS} ip addr add {RX_ADDR}/24 dev {VETH_RX}
            ip netns exec {NETNS} ip link set {VETH_RX} up
            ip netns exec {NETNS} ip link set lo up
            tc qdisc add dev {VETH_TX} root handle 1: htb default 1
            tc class add dev {VETH_TX} parent 1: classid 1:1 htb rate 20gbit
        """)
        for i in range(8):
            sh(f"tc class add dev {VETH_TX} parent 1: classid 1:{10 + i} htb rate {cap}mbit ceil {cap}mbit && "
               f"tc filter add dev {VETH_TX} protocol ip parent 1: prio 1 u32 match ip dport {port + 1 + i} 0xffff "
               f"flowid 1:{10 + i}")
        recipe = os.path.join(ROOT, "scripts", "transport", "stream-over-nc.sh")
        env = dict(os.environ, PRODUCER=PRODUCER, CONSUMER=CONSUMER)
        for n in (1, 2, 4, 8):
            receive = (f"ip netns exec {NETNS} {recipe} receive --listen {RX_ADDR} --port {port} --streams {n} "
                       f"--wait 30 -- -q extract -C {self.target} --no-fsync")
            send = (f"{recipe} send --host {RX_ADDR} --port {port} --streams {n} --wait 30 -- -q "
                    f"--source {dataset}")
            command = f"{receive} & r=$!; {send}; s=$?; wait $r && exit $s"
            # No warm-up run: the dataset is in the cache already, and a run at one connection takes minutes.
            record = timed(f"nc x {n} over the emulated link", command, self.args.runs, before=self.reset_targets,
                           env=env, warmup=False)
            record["mb_per_s"] = payload / record["median"] / 1e6
            record.update(group="link", pipes=n, cap_mbit=cap, bytes=payload,
                          ideal_mb_per_s=n * cap * 1e6 / 8 / 1e6)
            self.records.append(record)

    # -- report
    def report(self):
        machine = (f"{os.cpu_count()} cores ({cpu_model()}), {mem_gib()} GiB, kernel {platform.release()}")
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, "dataset_bytes": self.bytes,
                "size_mb": self.args.size_mb, "runs": self.args.runs, "target_root": self.args.target_root,
                "commit": git_commit(), "command": " ".join(sys.argv)}
        json.dump({"meta": meta, "results": self.records}, open(os.path.join(self.out, "results.json"), "w"),
                  indent=1)
        lines = [f"Machine: {machine}. Commit {meta['commit']}, {meta['date']}. Dataset {self.bytes:,} bytes "
                 f"({self.args.size_mb} MiB), medians of {self.args.runs} run(s) after a warm-up; MB/s = 10^6 "
                 f"bytes of dataset per second. Targets (extract, file://, s3s-fs root) on {self.args.target_root}.",
                 ""]
        peers = [r for r in self.records if r["group"] == "peer"]
        for compression in COMPRESSIONS:
            if not any(r["group"] == "ours" and r["compression"] == compression for r in self.records):
                continue
            lines += [f"### {'No compression' if compression == 'none' else 'zstd -1'}", "",
                      "| case | median s | MB/s | x best peer (which) | producer RSS MiB | consumer RSS MiB |",
                      "|---|---|---|---|---|---|"]
            for r in self.records:
                if r["group"] != "ours" or r["compression"] != compression:
                    continue
                group = [p for p in peers if p["kind"] == r["kind"] and p["compression"] == compression]
                best = min(group, key=lambda p: p["median"]) if group else None
                ratio = f"{best['median'] / r['median']:.2f} ({best['case']})" if best else "–"
                rss = r["rss_mib"]
                lines.append(f"| {r['layout']} → {r['kind']} | {r['median']:.3f} | {r['mb_per_s']:,.0f} | "
                             f"{esc(ratio)} | {rss.get('producer', 0):.0f} | "
                             f"{fmt_rss(rss.get('consumer'))} |")
            lines.append("")
        if peers:
            lines += ["### Peers", "", "| peer | for | median s | MB/s | peak RSS MiB |", "|---|---|---|---|---|"]
        for p in peers:
            if p["kind"] == "put s3://" and p["compression"] == "zstd":
                continue
            rss = next(iter(p["rss_mib"].values()), None)
            lines.append(f"| {esc(p['case'])} | {p['kind']}, {p['compression']} | {p['median']:.3f} | "
                         f"{p['mb_per_s']:,.0f} | {fmt_rss(rss)} |")
        link = [r for r in self.records if r["group"] == "link"]
        if link:
            one = link[0]["mb_per_s"]
            lines += ["", f"### Emulated link: each TCP connection capped at {link[0]['cap_mbit']} Mbit/s "
                      f"(htb, veth into a network namespace), {link[0]['bytes']:,} bytes, extract at the receiver", "",
                      "| connections | median s | MB/s | x one connection | of N x cap |", "|---|---|---|---|---|"]
            for r in link:
                lines.append(f"| {r['pipes']} | {r['median']:.3f} | {r['mb_per_s']:,.1f} | {r['mb_per_s'] / one:.2f} | "
                             f"{r['mb_per_s'] / r['ideal_mb_per_s'] * 100:.0f} % |")
        open(os.path.join(self.out, "results.md"), "w").write("\n".join(lines) + "\n")
        plot(self.records, os.path.join(self.out, "throughput.svg"), machine)
        print("\n".join(lines))
        log(f"wrote {self.out}/results.json, results.md, throughput.svg")


def esc(text):
    """TEXT for a markdown table cell."""
    return text.replace("|", "\\|")


def fmt_rss(value):
    return "–" if value is None else f"{value:.0f}"


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def mem_gib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            return round(int(line.split()[1]) / 1024 / 1024)
    return "?"


def git_commit():
    try:
        return subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plot(records, path, machine):
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    link = [r for r in records if r["group"] == "link"]
    measured = [c for c in COMPRESSIONS if any(r["group"] == "ours" and r["compression"] == c for r in records)]
    panels = measured + (["link"] if link else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    positions = {"STDOUT": 0, "FIFO 1": 1, "FIFO 2": 2, "FIFO 4": 3, "FIFO 8": 4}
    for ax, panel in zip(axes[0], panels):
        if panel == "link":
            xs = [r["pipes"] for r in link]
            ax.plot(xs, [r["mb_per_s"] for r in link], "o-", label="stream-over-nc.sh → extract")
            ax.plot(xs, [r["ideal_mb_per_s"] for r in link], "k:", label="N x per-connection cap")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("TCP connections (one stream each)")
            ax.set_title(f"Emulated link, {link[0]['cap_mbit']} Mbit/s per connection")
        else:
            for kind in KINDS:
                rows = [r for r in records if r["group"] == "ours" and r["kind"] == kind
                        and r["compression"] == panel]
                if rows:
                    ax.plot([positions[r["layout"]] for r in rows], [r["mb_per_s"] for r in rows], "o-", label=kind)
            peers = [r for r in records if r["group"] == "peer" and r["compression"] == panel]
            styles = ["--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
            seen = set()
            for i, p in enumerate(peers):
                if p["case"] in seen:
                    continue
                seen.add(p["case"])
                ax.axhline(p["mb_per_s"], color="grey", linestyle=styles[i % len(styles)], linewidth=1)
                ax.annotate(p["case"], (4.05, p["mb_per_s"]), fontsize=7, color="dimgrey", va="center")
            ax.set_xticks(list(positions.values()), list(positions.keys()))
            ax.set_xlim(-0.3, 5.6)
            ax.set_xlabel("producer output")
            ax.set_title("no compression" if panel == "none" else "zstd -1")
        ax.set_ylabel("MB/s (dataset bytes)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"xbkit throughput — {machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    fig.savefig(os.path.splitext(path)[0] + ".png", dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dataset, one run: under 2 minutes")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", os.path.join(ROOT, "target", "bench")))
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/xbkit-bench-matrix"))
    parser.add_argument("--target-root", default=os.environ.get("BENCH_TARGET", "/dev/shm"),
                        help="where extract, the file:// store and the S3 server's root go (default tmpfs)")
    parser.add_argument("--size-mb", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--no-s3", dest="s3", action="store_false")
    parser.add_argument("--no-link", dest="link", action="store_false")
    parser.add_argument("--link-cap-mbit", type=int, default=200)
    parser.add_argument("--link-size-mb", type=int)
    parser.add_argument("--only", choices=["matrix", "link"], help="run only the matrix (with its peers) or the link")
    args = parser.parse_args()
    args.size_mb = args.size_mb or (128 if args.quick else 1024)
    args.runs = args.runs or (1 if args.quick else 3)
    # The recipe's fixed start-up (the control connection, the pipes) is a fraction of a second: the link's dataset
    # must take long enough at 8 x the cap for it not to weigh on the ratio.
    args.link_size_mb = args.link_size_mb or (24 if args.quick else 1024)
    if args.s3 and not shutil.which("s3s-fs"):
        raise SystemExit("bench: s3s-fs missing (cargo install s3s-fs --version 0.14.1 --features binary --locked), "
                         "or --no-s3")
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    bench = Bench(args)
    bench.prepare()
    cleanups.append(lambda: [shutil.rmtree(p, True) for p in (bench.target, bench.store, bench.fifo)])
    if args.only != "link":
        if args.s3:
            bench.start_s3()
        kinds = KINDS if args.s3 else KINDS[:3]
        for compression in COMPRESSIONS:
            for kind in kinds:
                for layout in LAYOUTS:
                    bench.ours(layout, kind, compression)
        bench.peers()
    if args.link and args.only != "matrix":
        bench.link()
    bench.report()


if __name__ == "__main__":
    main()
