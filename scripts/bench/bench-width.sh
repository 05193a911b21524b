#!/usr/bin/env bash
# bench-width.sh [RUNS] [SCENARIO...]
#
# Issue #22's rows: wall time and CPU seconds of each side of a pipe, ours against tar in the same run.
# Scenarios (default: big small ext4):
#   big     one 2 GiB file of random bytes, tmpfs to tmpfs
#   small   100,000 files of 1-8 KiB in 1,000 directories, tmpfs to tmpfs
#   ext4    60,000 files of 0.5-16 KiB on the disk (/tmp, read once to warm the cache) into tmpfs
#   tiny    1,000,000 files of 16 bytes, tmpfs to tmpfs (slow: about 20 s a run)
# Each case is `SENDER | RECEIVER`, each side under `/usr/bin/time`, so the CPU seconds (user + system) of each
# side are measured apart; the cases of a scenario run in turn, RUNS rounds (default 5), so that the machine's
# moods fall on every case alike. The consumer runs with --no-fsync (tar does not sync). Medians are printed as a
# markdown table; every run goes to ${BENCH_OUT:-/tmp/xbkit-bench}/width.json.
source "$(dirname "$0")/bench-lib.sh"
runs=${1:-5}
shift || true
scenarios=("${@:-big small ext4}")
# shellcheck disable=SC2206 # one word per scenario
scenarios=(${scenarios[*]})
need python3 /usr/bin/time tar
build
out_dir=${BENCH_OUT:-/tmp/xbkit-bench}
mkdir -p "$out_dir"
python3 - "$bin" "$runs" "$out_dir/width.json" "$(machine)" "${scenarios[@]}" <<'PY'
import json, os, random, shutil, statistics, subprocess, sys, tempfile, time

bin_dir, runs, json_path, machine, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
producer, consumer = f"{bin_dir}/producer", f"{bin_dir}/consumer"
target = "/dev/shm/xbkit-width-out"


def make_tree(root, files, sizes, seed=7):
    """FILES files in 1,000 directories, sizes drawn from SIZES (a function of the generator), unless ROOT exists."""
    if os.path.isdir(root):
        return
    partial = root + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    rng = random.Random(seed)
    for i in range(files):
        d = os.path.join(partial, "db%03d" % (i % 1000))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "t%07d.ibd" % i), "wb") as f:
            f.write(rng.randbytes(sizes(rng)))
    os.rename(partial, root)


def make_big(root):
    if os.path.isdir(root):
        return
    os.makedirs(root + ".partial", exist_ok=True)
    with open("/dev/urandom", "rb") as src, open(root + ".partial/ibdata1", "wb") as dst:
        for _ in range(2048):
            dst.write(src.read(1 << 20))
    os.rename(root + ".partial", root)


def tree_bytes(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def timed(command, log):
    return f"/usr/bin/time -f '%e %U %S' -o {log} {command}"


def run_case(send, receive):
    """One run: wall seconds, and (user + system) CPU seconds of each side."""
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    with tempfile.TemporaryDirectory() as logs:
        a, b = f"{logs}/send", f"{logs}/receive"
        pipeline = f"{timed(send, a)} | {timed(receive, b)}"
        started = time.monotonic()
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True)
        wall = time.monotonic() - started
        cpu = []
        for log in (a, b):
            _, user, system = open(log).read().split()[-3:]
            cpu.append(float(user) + float(system))
    return wall, cpu[0], cpu[1]


def cases_for(source):
    return [
        ("tar -c | tar -x", f"tar -C {source} -cf - .", f"tar -C {target} -xf -"),
        ("producer | consumer extract", f"{producer} -q --source {source} --stream=xbstream",
         f"{consumer} -q extract --no-fsync -C {target}"),
        ("producer | consumer extract --parallel 1", f"{producer} -q --source {source} --stream=xbstream",
         f"{consumer} -q extract --no-fsync --parallel 1 -C {target}"),
        ("tar -c | cat", f"tar -C {source} -cf - .", "cat > /dev/null"),
        ("producer | cat", f"{producer} -q --source {source} --stream=xbstream", "cat > /dev/null"),
    ]


def warm(source):
    subprocess.run(f"find {source} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)


SCENARIOS = {
    "big": ("one 2 GiB file, tmpfs to tmpfs", "/dev/shm/xbkit-width-big", make_big),
    "small": ("100,000 files of 1-8 KiB, tmpfs to tmpfs", "/dev/shm/xbkit-width-small",
              lambda root: make_tree(root, 100_000, lambda rng: rng.randint(1, 8) * 1024)),
    "ext4": ("60,000 files of 0.5-16 KiB, warm ext4 (/tmp) into tmpfs", "/tmp/xbkit-width-ext4",
             lambda root: make_tree(root, 60_000, lambda rng: rng.randint(512, 16384))),
    "tiny": ("1,000,000 files of 16 bytes, tmpfs to tmpfs", "/dev/shm/xbkit-width-tiny",
             lambda root: make_tree(root, 1_000_000, lambda rng: 16)),
}

results = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "runs": runs, "scenarios": {}}
for name in scenarios:
    title, source, make = SCENARIOS[name]
    make(source)
    warm(source)
    cases = cases_for(source)
    measured = {case: [] for case, _, _ in cases}
    for _ in range(runs):
        for case, send, receive in cases:
            measured[case].append(run_case(send, receive))
    shutil.rmtree(target, ignore_errors=True)
    results["scenarios"][name] = {"title": title, "bytes": tree_bytes(source), "runs": measured}
    json.dump(results, open(json_path, "w"), indent=1)

    def med(case, i):
        return statistics.median(run[i] for run in measured[case])

    print(f"\n### {title} ({tree_bytes(source) / 1e6:,.0f} MB); medians of {runs}\n")
    print("| case | wall s | x tar | sender CPU s | receiver CPU s | CPU s both |")
    print("|---|---|---|---|---|---|")
    for case, _, _ in cases:
        base = "tar -c | cat" if case.endswith("| cat") else "tar -c | tar -x"
        wall, send_cpu, receive_cpu = med(case, 0), med(case, 1), med(case, 2)
        print(f"| {case.replace('|', chr(92) + '|')} | {wall:.3f} | {med(base, 0) / wall:.2f} | {send_cpu:.2f} | "
              f"{receive_cpu:.2f} | {send_cpu + receive_cpu:.2f} |")
print(f"\n{machine}; {results['date']}")
PY
