"""
The pure core's throughput: simulator records through the replay engine on one core.

Writes benchmarks/results/core_throughput.json and .md. Run:

    .venv/bin/python benchmarks/core_throughput.py [--customers 20000] [--days 180] [--repeat 1]

It measures, separately: generating the records (simulator), parsing them, the replay
(parse + features + score + rules + labels + learning, as `Replay.run` does it), and the
quality figures the demo prints (progressive-validation AUC and log loss), in CPU seconds
(`time.process_time`) and records per second. With `--repeat N` the replay runs N times and
the fastest counts (the others are listed): the machine may be shared, and CPU time still
grows with the neighbours' load (caches, memory bandwidth), so the load average is recorded
beside the figures.
"""

from __future__ import annotations

import argparse
import os
import time

from bench_io import machine, write_result

from churnwatch.core.events import parse_event
from churnwatch.replay.engine import Replay
from churnwatch.settings import CoreSettings
from churnwatch.sim.simulator import SimConfig, Simulation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="replay runs; the fastest counts")
    args = parser.parse_args()
    config = SimConfig(customers=args.customers, days=args.days, seed=args.seed)
    policy = CoreSettings().to_policy()
    load_before = os.getloadavg()[0]

    wall = time.perf_counter()
    t = time.process_time()
    records = list(Simulation(config).records())
    sim_cpu = time.process_time() - t

    t = time.process_time()
    for raw in records:
        parse_event(raw)
    parse_cpu = time.process_time() - t

    runs: list[float] = []
    quality_cpu = 0.0
    for _ in range(max(1, args.repeat)):
        replay = Replay(policy)
        t = time.process_time()
        replay.run(records)
        runs.append(time.process_time() - t)
        t = time.process_time()
        q = replay.quality
        for figure in (q.model, q.prior, q.blended):
            figure.to_dict()
        quality_cpu = time.process_time() - t
    replay_cpu = min(runs)
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
        "replay_cpu_s_runs": [round(run, 2) for run in runs],
        "replay_us_per_record": round(replay_cpu / n * 1e6, 1),
        "replay_records_per_s": round(n / replay_cpu),
        "quality_figures_cpu_s": round(quality_cpu, 2),
        "examples_learned": replay.counts.examples,
        "alerts": replay.counts.alerts,
        "total_wall_s": round(wall, 1),
        **machine(load_before),
    }
    command = (
        ".venv/bin/python benchmarks/core_throughput.py "
        f"--customers {args.customers} --days {args.days} --repeat {args.repeat}"
    )
    write_result("core_throughput", "Core throughput (one process, one core)", command, result)


if __name__ == "__main__":
    main()
