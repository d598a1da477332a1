"""Tables and learning curves for docs/results.md from RL run directories.

    python experiments/summarize.py --out docs/results runs/tracerl_s0 runs/tracerl_s1 ...

Each run directory is an ``examples/tracerl.py`` workdir: its
``metrics.jsonl`` holds the held-out accuracy at RL step 0 (the SFT start)
and at every ``eval.every`` steps, the per-step mean rollout reward and the
per-step wall-clock. Runs are grouped by name with the trailing ``_s<seed>``
removed, so seeds of one recipe share a row (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def load(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    acc = {}
    for r in rows:  # a resumed run may log a step twice: the last entry wins
        if "eval/accuracy" in r:
            acc[int(r["step"])] = float(r["eval/accuracy"])
    step_rows = {int(r["step"]): r for r in rows if "reward" in r}  # the last entry of a step wins
    steps = sorted(step_rows)
    times = [float(r["time_step"]) for r in rows if "time_step" in r][1:]  # step 1 includes compilation
    return dict(name=run.name, acc=acc, reward=[float(step_rows[s]["reward"]) for s in steps], steps=steps,
                step_seconds=float(np.median(times)) if times else float("nan"),
                step_rows=[step_rows[s] for s in steps])


def spread(r: dict) -> dict:
    """The update's spread over a run's steps, and the reward's (the sandbox's) share of each step.

    Steps whose groups were all filtered out train nothing and carry no update metrics; they are skipped.
    """
    upd = [m for m in r["step_rows"] if "policy/grad_norm" in m]
    col = lambda k: np.array([float(m[k]) for m in upd]) if upd and k in upd[0] else np.array([np.nan])  # noqa: E731
    g, ratio = col("policy/grad_norm"), col("policy/ratio_max") - col("policy/ratio_min")
    timed = [m for m in r["step_rows"] if "time_reward" in m and "time_step" in m]
    share = (sum(float(m["time_reward"]) for m in timed) / sum(float(m["time_step"]) for m in timed)
             if timed else float("nan"))
    per_s = float(np.median([float(m["reward_responses_per_s"]) for m in timed])) if timed else float("nan")
    return dict(updated=len(upd), grad=(g.mean(), g.max()), ratio=(ratio.mean(), ratio.max()),
                adv_std=col("policy/advantage_std").mean(), reward_share=share, responses_per_s=per_s)


def group_name(name: str) -> str:
    return re.sub(r"_s\d+$", "", name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="directory for curves.png and table.md")
    args = ap.parse_args()
    runs = [load(r) for r in args.runs]
    groups = defaultdict(list)
    for r in runs:
        groups[group_name(r["name"])].append(r)

    lines = ["| recipe | seeds | SFT start | after RL | gain (points) | median s / RL step |",
             "|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        start = np.array([r["acc"][0] for r in rs])
        end = np.array([r["acc"][max(r["acc"])] for r in rs])
        gain = 100 * (end - start)
        fmt = (lambda a: f"{a.mean():.3f} ± {a.std():.3f}") if len(rs) > 1 else (lambda a: f"{a[0]:.3f}")
        gfmt = f"{gain.mean():+.1f} ± {gain.std():.1f}" if len(rs) > 1 else f"{gain[0]:+.1f}"
        lines.append(f"| {name} | {len(rs)} | {fmt(start)} | {fmt(end)} | {gfmt} | "
                     f"{np.median([r['step_seconds'] for r in rs]):.1f} |")
    lines.append("")
    lines.append("Per run (held-out accuracy at each evaluation):")
    lines.append("")
    for r in runs:
        lines.append(f"- `{r['name']}`: " + ", ".join(f"{s}: {a:.3f}" for s, a in sorted(r["acc"].items())))
    lines += ["", "Per run, the update's spread over its steps (steps with no kept group train nothing and are left "
              "out) and the reward's share of the step time (the sandbox, for a code task):", "",
              "| run | steps updated | grad norm mean / max | ratio range mean / max | advantage std | "
              "reward share of step | responses scored / s (median) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        sp = spread(r)
        lines.append(f"| `{r['name']}` | {sp['updated']} | {sp['grad'][0]:.2f} / {sp['grad'][1]:.2f} | "
                     f"{sp['ratio'][0]:.2f} / {sp['ratio'][1]:.2f} | {sp['adv_std']:.2f} | "
                     f"{100 * sp['reward_share']:.1f}% | {sp['responses_per_s']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_rew) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rs) in enumerate(groups.items()):
        for j, r in enumerate(rs):
            label = name if j == 0 else None
            xs = sorted(r["acc"])
            ax_acc.plot(xs, [r["acc"][s] for s in xs], "o-", color=colors[i % len(colors)], alpha=0.8, label=label)
            # A 5-step moving average: single-step rewards over 128 rollouts are noisy.
            rew = np.convolve(r["reward"], np.ones(5) / 5, mode="valid")
            ax_rew.plot(r["steps"][4:], rew, color=colors[i % len(colors)], alpha=0.8, label=label)
    ax_acc.set(xlabel="RL step", ylabel="held-out accuracy (greedy)", title="held-out accuracy")
    ax_rew.set(xlabel="RL step", ylabel="mean rollout reward (5-step average)", title="rollout reward")
    ax_acc.legend(fontsize=8)
    ax_acc.grid(alpha=0.3)
    ax_rew.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=110)
    print(f"wrote {args.out / 'curves.png'} and {args.out / 'table.md'}")


if __name__ == "__main__":
    main()
