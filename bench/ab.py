#!/usr/bin/env python3
"""Interleaved A/B of the aftercart ingress: CPU time per webhook of two or more variants.

Each variant is `name=BINARY` or `name=BINARY:ENV=VALUE,ENV=VALUE` (the environment added to the
ingress's). One broker (`aftercart dev --broker-only`) serves every run; per round every variant
runs once, in alternating order, each a fresh ingress under the same closed loop (or `--rate`).
CPU per webhook = the ingress's CPU seconds (every thread, from /proc/<pid>/stat) / answers in
the load generator's measured window. On a shared machine CPU per request moves far less than
req/s; the spread between rounds of the same variant is printed so a difference can be judged
against it. With `--counts`, `perf stat` also counts the ingress's page faults, syscalls and
context switches per webhook over the middle of each run: counts the neighbours barely move,
where CPU time moves with them. Standard library only; reuses bench/run.py's process and /proc
helpers.

    python3 bench/ab.py --bin target/release/aftercart --rounds 3 \
        base=target/release/aftercart \
        nolz4=target/release/aftercart:AFTERCART_KAFKA_PROPERTIES=compression.type=none
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: start, stop, Sampler, loadgen, aftercart_target)

# Software events: they work on VMs without hardware counters.
COUNTED = {"page-faults": "faults", "raw_syscalls:sys_enter": "syscalls",
           "context-switches": "switches"}


class Counts(threading.Thread):
    """`perf stat` on one process for `seconds`, once `delay` has passed (inside the measured
    window: after the load generator's warm-up, before its end)."""

    def __init__(self, pid: int, delay: float, seconds: float):
        super().__init__(daemon=True)
        self.pid, self.delay, self.seconds, self.counts = pid, delay, seconds, {}

    def run(self) -> None:
        time.sleep(self.delay)
        out = subprocess.run(["perf", "stat", "-x", ",", "-e", ",".join(COUNTED), "-p",
                              str(self.pid), "--", "sleep", str(self.seconds)],
                             capture_output=True, text=True)
        for line in out.stderr.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] in COUNTED and fields[0].replace(".", "").isdigit():
                self.counts[COUNTED[fields[2]]] = float(fields[0])


def variant(spec: str) -> tuple[str, str, dict]:
    name, rest = spec.split("=", 1)
    binary, _, env = rest.partition(":")
    pairs = dict(kv.split("=", 1) for kv in env.split(",") if kv) if env else {}
    return name, str(Path(binary).resolve()), pairs


def one_run(name: str, binary: str, env: dict, gen: str, brokers: str, broker_pid: int,
            args) -> dict:
    target = run.aftercart_target(binary, brokers, f"ab-{name}", name)
    process = run.start(target["name"], target["argv"], env={**target["env"], **env})
    run.wait_http(target["health"], process)
    sampler = run.Sampler({"server": process.pid, "broker": broker_pid})
    sampler.start()
    counts = None
    if args.counts:
        warmup, duration = run.seconds(args.warmup), run.seconds(args.duration)
        counts = Counts(process.pid, warmup + 1, max(duration - 2, 1))
        counts.start()
    load = ["--connections", str(args.connections), "--warmup", args.warmup, "--duration",
            args.duration]
    if args.rate:
        load += ["--rate", str(args.rate)]
    report, _ = run.loadgen(gen, target["url"], load, name, sampler)
    gen_samples = sampler.samples.pop("loadgen", [])
    sampler.finish()
    run.stop(process)
    start_s, end_s = report["window_start_unix_ms"] / 1000, report["window_end_unix_ms"] / 1000
    server = sampler.window("server", start_s, end_s)
    broker = sampler.window("broker", start_s, end_s)
    machine = sampler.window("machine", start_s, end_s)
    sampler.samples["loadgen"] = gen_samples
    loadgen_w = sampler.window("loadgen", start_s, end_s)
    answered = report["throughput_rps"] * max(server["wall_s"], 1e-9)
    others = machine["cpu_s"] - server["cpu_s"] - broker["cpu_s"] - loadgen_w["cpu_s"]
    per_webhook = {}
    if counts:
        counts.join()
        counted = report["throughput_rps"] * counts.seconds
        per_webhook = {k: v / max(counted, 1) for k, v in counts.counts.items()}
    return {"variant": name, **per_webhook, "rps": report["throughput_rps"],
            "cpu_us": server["cpu_s"] / max(answered, 1) * 1e6,
            "broker_us": broker["cpu_s"] / max(answered, 1) * 1e6,
            "p99_ms": report["latency_ms"]["p99"],
            "others_cores": others / max(machine["wall_s"], 1e-9),
            "rss_mib": server["rss_max"] / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="binary for the broker and the load generator")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, help="open loop at this rate instead of closed loop")
    parser.add_argument("--counts", action="store_true",
                        help="also count page faults, syscalls and context switches per webhook (perf stat)")
    parser.add_argument("--json", help="also write every run here")
    parser.add_argument("variants", nargs="+", help="name=BINARY[:ENV=VALUE,...]")
    args = parser.parse_args()
    if args.counts and not shutil.which("perf"):
        parser.error("--counts needs perf")
    run.OUT.mkdir(parents=True, exist_ok=True)
    variants = [variant(v) for v in args.variants]
    gen = str(Path(args.bin).resolve())
    results = []
    try:
        broker = run.start("ab-broker", [gen, "dev", "--broker-only"], stdout=subprocess.PIPE,
                           env={"AFTERCART_LOG": "warn"})
        m = re.search(r"broker (\S+)", broker.stdout.readline().decode())
        if not m:
            raise RuntimeError("no broker address")
        for round_ in range(args.rounds):
            # Alternate the order each round: a neighbour's burst then hits each variant alike.
            order = variants if round_ % 2 == 0 else list(reversed(variants))
            for name, binary, env in order:
                r = one_run(name, binary, env, gen, m.group(1), broker.pid, args)
                r["round"] = round_ + 1
                results.append(r)
                run.log(f"round {r['round']} {name}: {r['cpu_us']:.1f} µs/webhook, "
                        f"{r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms, broker {r['broker_us']:.1f} µs, "
                        f"others {r['others_cores']:.2f} cores")
    finally:
        run.stop_all()
    print("\n| variant | CPU µs/webhook, each round | median | req/s, each round | others' cores, each round |")
    print("|---|---|---|---|---|")
    for name, _, _ in variants:
        mine = [r for r in results if r["variant"] == name]
        cpu = " / ".join(f"{r['cpu_us']:.1f}" for r in mine)
        rps = " / ".join(f"{r['rps']:.0f}" for r in mine)
        others = " / ".join(f"{r['others_cores']:.2f}" for r in mine)
        median = statistics.median(r["cpu_us"] for r in mine)
        print(f"| {name} | {cpu} | {median:.1f} | {rps} | {others} |")
    if args.counts:
        print("\n| variant | page faults / webhook | syscalls / webhook | context switches / webhook |")
        print("|---|---|---|---|")
        for name, _, _ in variants:
            mine = [r for r in results if r["variant"] == name]
            cells = [" / ".join(f"{r.get(k, float('nan')):.2f}" for r in mine)
                     for k in COUNTED.values()]
            print(f"| {name} | {' | '.join(cells)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
