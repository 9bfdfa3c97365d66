"""The README's performance plot: the gateway's ratios to its references, from the samples the benches wrote.

    .venv/bin/python bench/proxy.py --runs 5 --json /tmp/proxy.json
    .venv/bin/python bench/presign_endpoint.py --runs 5 --json /tmp/presign.json
    .venv/bin/python bench/plot.py /tmp/proxy.json /tmp/presign.json [--out docs/performance.png]

Each bar is the median of the per-round ratios (each round measures every target once, in turn), the whisker
their range, the tick the issue's goal. Needs matplotlib (``pip install -e '.[bench]'``), which the gateway
itself never imports.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def per_round(numerators: list[dict[str, float]], denominators: list[dict[str, float]], field: str) -> list[float]:
    return [n[field] / d[field] for n, d in zip(numerators, denominators, strict=True)]


def bars(proxy: dict[str, Any], presign: dict[str, Any]) -> list[tuple[str, list[float], float, str]]:
    """(label, per-round ratios, goal, which side of the goal is good)."""
    rows = proxy["targets"]
    nginx = rows[proxy["reference"]]
    found = []
    for name, label in (
        ("gateway, default config", "default config"),
        ("gateway, log_level warning", "log_level warning"),
    ):
        if name in rows:
            found.append(
                (f"GET via gateway ({label}): req/s ÷ nginx", per_round(rows[name], nginx, "requests_per_s"), 0.6, ">")
            )
            found.append((f"GET via gateway ({label}): p99 ÷ nginx", per_round(rows[name], nginx, "p99_ms"), 1.5, "<"))
    targets = presign["targets"]
    gateway, botocore, trivial = (
        targets[n] for n in ("gateway, default config", "botocore reference", "trivial handler")
    )
    found.append(
        (
            "presign (default config): req/s ÷ botocore endpoint",
            per_round(gateway, botocore, "requests_per_s"),
            3.0,
            ">",
        )
    )
    found.append(
        (
            "presign at saturation: CPU per request ÷ trivial handler",
            per_round(gateway, trivial, "cpu_us_per_request"),
            1.5,
            "<",
        )
    )
    if "paced" in presign:  # the same at an equal offered load (bench/presign_endpoint.py --paced)
        paced = presign["paced"]
        found.append(
            (
                f"presign at {paced['offered_requests_per_s']:,} req/s each: CPU per request ÷ trivial handler",
                paced["cpu_vs_trivial"],
                1.5,
                "<",
            )
        )
    return found


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several presign_endpoint.py outputs as one: their rounds, in order."""
    whole: dict[str, Any] = dict(runs[0])
    whole["targets"] = {name: [s for run in runs for s in run["targets"][name]] for name in runs[0]["targets"]}
    for key in ("speedup_vs_botocore", "cpu_vs_trivial"):
        whole[key] = [ratio for run in runs for ratio in run[key]]
    if all("paced" in run for run in runs):
        whole["paced"] = dict(
            runs[0]["paced"], cpu_vs_trivial=[r for run in runs for r in run["paced"]["cpu_vs_trivial"]]
        )
    else:
        whole.pop("paced", None)
    return whole


def plot(found: list[tuple[str, list[float], float, str]], out: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 0.6 * len(found) + 1.4))
    positions = list(range(len(found)))[::-1]
    for y, (_label, ratios, goal, better) in zip(positions, found, strict=True):
        middle = statistics.median(ratios)
        met = middle >= goal if better == ">" else middle <= goal
        axes.barh(y, middle, color="#4c9a2a" if met else "#c0504d", height=0.6)
        axes.errorbar(middle, y, xerr=[[middle - min(ratios)], [max(ratios) - middle]], color="black", capsize=4)
        axes.plot([goal, goal], [y - 0.4, y + 0.4], color="black", linewidth=2, linestyle=":")
        axes.text(
            max(*ratios, goal) * 1.05,
            y,
            f"{middle:.2f}x (goal {'≥' if better == '>' else '≤'} {goal:g}x)",
            va="center",
            fontsize=8,
        )
    axes.set_yticks(positions, [label for label, *_ in found], fontsize=8)
    axes.axvline(1.0, color="grey", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlim(0.2, max(max(r) for _, r, _, _ in found) * 2.2)
    ticks = [0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8]
    axes.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("ratio (log scale): bar = median of rounds, whisker = range, dotted = goal")
    axes.set_title(caption, fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("proxy", type=Path, help="bench/proxy.py --json output")
    parser.add_argument(
        "presign", type=Path, nargs="+", help="bench/presign_endpoint.py --json output (several: their rounds together)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.png")
    args = parser.parse_args()
    proxy = json.loads(args.proxy.read_text())
    presign = merged([json.loads(path.read_text()) for path in args.presign])
    caption = (
        f"gateway on 1 CPU, wrk on the other; small GETs c={proxy['connections']}, "
        f"{len(proxy['targets'][proxy['reference']])} rounds;\npresign c={presign['connections']}, "
        f"{len(presign['speedup_vs_botocore'])} rounds"
    )
    plot(bars(proxy, presign), args.out, caption)
    print(args.out)


if __name__ == "__main__":
    main()
