"""``load plot``: p99 latency and server CPU against users, one curve per sweep file.

    python -m benchmarks.load plot benchmarks/results/sweep-before-design.json \\
        benchmarks/results/sweep-after-design.json --out benchmarks/results/sweep.png

Reads the JSON files ``load sweep`` writes (``benchmarks.report.save_sweep``) and draws two
panels sharing the users axis: p99 delivery latency (log scale, with the 100 ms limit) and
server CPU (% of one core). Generator-bound points are drawn hollow: they are not server
figures. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def plot(files: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, cpu) = plt.subplots(2, 1, sharex=True, figsize=(8, 7))
    for path in files:
        document: dict[str, Any] = orjson.loads(path.read_bytes())
        points = sorted(document["points"], key=lambda p: p["users"])
        label = f"{document['label']} ({document['config']['model']}, " \
                f"{document['server_commit']})"  # fmt: skip
        users = [p["users"] for p in points]
        p99 = [p["p99_ms"] for p in points]
        share = [(p["server_cpu"] or 0) * 100 for p in points]
        (line,) = latency.plot(users, p99, marker="o", label=label)
        cpu.plot(users, share, marker="o", color=line.get_color(), label=label)
        for p in points:
            if p["generator_bound"]:
                for axis, value in ((latency, p["p99_ms"]), (cpu, (p["server_cpu"] or 0) * 100)):
                    axis.plot([p["users"]], [value], marker="o", markerfacecolor="white",
                              color=line.get_color())  # fmt: skip
    latency.axhline(100, color="grey", linestyle="--", linewidth=1, label="p99 limit (100 ms)")
    latency.set_yscale("log")
    latency.set_ylabel("p99 delivery latency (ms)")
    latency.legend(fontsize=8)
    latency.grid(True, which="both", alpha=0.3)
    cpu.set_ylabel("server CPU (% of one core)")
    cpu.set_xlabel("simulated users (400 friends each)")
    cpu.axhline(100, color="grey", linestyle=":", linewidth=1)
    cpu.grid(True, alpha=0.3)
    fig.suptitle("geopresence under the load model: one process, one core")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot written to {out}")
