"""
The pure core's throughput: simulator records through the replay engine on one core.

Writes benchmarks/results/core_throughput.json and .md. Run:

    .venv/bin/python benchmarks/core_throughput.py [--customers 20000] [--days 180]

It measures, separately: generating the records (simulator), parsing them, and the replay
(parse + features + score + rules + labels + learning), in CPU seconds and records per
second, and the whole demo's wall time at the given size.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from churnwatch.core.events import parse_event
from churnwatch.replay.engine import Replay
from churnwatch.settings import CoreSettings
from churnwatch.sim.simulator import SimConfig, Simulation

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = SimConfig(customers=args.customers, days=args.days, seed=args.seed)
    policy = CoreSettings().to_policy()

    wall = time.perf_counter()
    t = time.process_time()
    records = list(Simulation(config).records())
    sim_cpu = time.process_time() - t

    t = time.process_time()
    for raw in records:
        parse_event(raw)
    parse_cpu = time.process_time() - t

    replay = Replay(policy)
    t = time.process_time()
    replay.run(records)
    replay_cpu = time.process_time() - t
    wall = time.perf_counter() - wall

    n = len(records)
    result = {
        "customers": args.customers,
        "days": args.days,
        "records": n,
        "records_per_customer": round(n / args.customers, 1),
        "simulate_cpu_s": round(sim_cpu, 2),
        "parse_us_per_record": round(parse_cpu / n * 1e6, 1),
        "replay_cpu_s": round(replay_cpu, 2),
        "replay_us_per_record": round(replay_cpu / n * 1e6, 1),
        "replay_records_per_s": round(n / replay_cpu),
        "examples_learned": replay.counts.examples,
        "alerts": replay.counts.alerts,
        "total_wall_s": round(wall, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in result.items()]
    (RESULTS / "core_throughput.md").write_text(
        "# Core throughput (one process, one core)\n\n"
        "`.venv/bin/python benchmarks/core_throughput.py "
        f"--customers {args.customers} --days {args.days}`\n\n" + "\n".join(lines) + "\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
