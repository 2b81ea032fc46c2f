"""`make demo` once per seed: does every run meet the demo's targets, and which is the worst?

One Ray demo run differs from the next (actor timing decides which versions sample what), so one
run does not show that a target holds. This bench runs `critic-unlearn demo` as a user does, once
per seed (`runtime.seed` and `learner.seed`), one after the other, and keeps each run's last
stdout line (the demo's JSON) in OUT/s<seed>.json. Then, from whatever results exist, OUT/table.md
(also printed) gives each seed's UA, IRA as % of base, the worst retain prompt's drop below base,
the share of retain prompts more than 10 points below base and the unlearning wall time, each
checked against the targets, and the worst of the seeds, which is what the README's demo row
reports. The last stdout line is JSON with the same.

Targets (per seed): UA >= 95%, IRA >= 95% of base, no retain prompt more than 10 points below its
base, unlearning <= 600 s. Cost: one demo is ~10 min on 2 cores, so three are ~30 min; a seed whose
JSON exists is skipped (rerun to resume; --force reruns).

    python -m bench.experiments.demo_seeds                    # seeds 0 1 2 -> runs/demo_seeds
    python -m bench.experiments.demo_seeds --seeds 3 --out runs/demo_seeds
    python -m bench.experiments.demo_seeds --table-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import REPO

TARGETS = {"ua": 0.95, "ira_of_base": 0.95, "worst_retain_drop_pts": 10.0, "unlearn_wall_s": 600.0}


def checks(row: dict[str, Any]) -> dict[str, bool | None]:
    """Each target of one demo's JSON: True met, False missed, None not measured."""
    ira_of_base = row["ira"] / row["base_ira"] if row.get("base_ira") else None
    drop = row.get("worst_retain_drop_pts")
    return {
        "ua": row["ua"] >= TARGETS["ua"],
        "ira_of_base": None if ira_of_base is None else ira_of_base >= TARGETS["ira_of_base"],
        "worst_retain_drop_pts": None if drop is None else drop <= TARGETS["worst_retain_drop_pts"],
        "unlearn_wall_s": row["unlearn_wall_s"] <= TARGETS["unlearn_wall_s"],
    }


def worst_of(rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The worst value of each reported number over the seeds, with the seed it came from."""
    if not rows:
        return {}

    def pick(fn, *, highest: bool):
        seed = (max if highest else min)(rows, key=lambda s: fn(rows[s]))
        return {"value": fn(rows[seed]), "seed": seed}

    drops = {s: r for s, r in rows.items() if r.get("worst_retain_drop_pts") is not None}
    out = {
        "ua": pick(lambda r: r["ua"], highest=False),
        "ira_of_base": pick(lambda r: r["ira"] / r["base_ira"], highest=False),
        "unlearn_wall_s": pick(lambda r: r["unlearn_wall_s"], highest=True),
    }
    if drops:
        seed = max(drops, key=lambda s: drops[s]["worst_retain_drop_pts"])
        out["worst_retain_drop_pts"] = {"value": drops[seed]["worst_retain_drop_pts"],
                                        "seed": seed,
                                        "prompt": drops[seed].get("worst_retain_prompt")}
    out["all_targets_met"] = all(
        v is True for r in rows.values() for v in checks(r).values())
    return out


def table(rows: dict[int, dict[str, Any]]) -> str:
    def mark(ok: bool | None) -> str:
        return "" if ok is None else (" ✓" if ok else " ✗")

    lines = ["# `make demo`, one run per seed", "",
             "Targets per seed: UA >= 95%, IRA >= 95% of base, no retain prompt more than 10 "
             "points below base, unlearning <= 600 s.", "",
             "| seed | UA | IRA (% of base) | worst retain drop | retain > 10 pts below | "
             "unlearning s | trajectories |", "|---|---|---|---|---|---|---|"]
    for seed in sorted(rows):
        r, c = rows[seed], checks(rows[seed])
        drop = r.get("worst_retain_drop_pts")
        share = r.get("retain_share_below_10")
        lines.append(
            f"| {seed} | {r['ua']:.1%}{mark(c['ua'])} | {r['ira']:.1%} "
            f"({r['ira'] / r['base_ira']:.1%}){mark(c['ira_of_base'])} | "
            + ("—" if drop is None else f"{drop:.1f} pts ({r.get('worst_retain_prompt')!r})")
            + f"{mark(c['worst_retain_drop_pts'])} | "
            + ("—" if share is None else f"{share:.1%}")
            + f" | {r['unlearn_wall_s']:.1f}{mark(c['unlearn_wall_s'])} | {r['trajectories']:,} |"
        )
    w = worst_of(rows)
    if w:
        lines += ["", f"Worst of {len(rows)}: UA {w['ua']['value']:.1%} (seed {w['ua']['seed']}), "
                  f"IRA {w['ira_of_base']['value']:.1%} of base (seed "
                  f"{w['ira_of_base']['seed']}), unlearning {w['unlearn_wall_s']['value']:.1f} s "
                  f"(seed {w['unlearn_wall_s']['seed']})"
                  + (f", worst retain drop {w['worst_retain_drop_pts']['value']:.1f} pts "
                     f"(seed {w['worst_retain_drop_pts']['seed']}, "
                     f"{w['worst_retain_drop_pts']['prompt']!r})"
                     if "worst_retain_drop_pts" in w else "")
                  + f". Every target met on every seed: {w['all_targets_met']}."]
    return "\n".join(lines) + "\n"


def read_rows(out: Path) -> dict[int, dict[str, Any]]:
    rows = {}
    for path in sorted(out.glob("s*.json")):
        rows[int(path.stem[1:])] = json.loads(path.read_text())
    return rows


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict[str, Any]:
    """`critic-unlearn demo` with this seed, as a user runs it; its JSON line, saved."""
    cmd = [str(Path(sys.executable).parent / "critic-unlearn"), "demo",
           f"runtime.seed={seed}", f"learner.seed={seed}", f"runtime.run_name=demo-s{seed}",
           *overrides]
    print(f"[demo_seeds] seed {seed}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo_seeds: seed {seed} failed (exit {proc.returncode}); its output "
                         "is above; nothing was written for it")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    tmp = out / f".s{seed}.json.tmp"
    tmp.write_text(json.dumps(row, indent=2))
    tmp.replace(out / f"s{seed}.json")  # a crash never leaves half a result
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "demo_seeds")
    ap.add_argument("--force", action="store_true", help="rerun seeds that have a result")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE for every demo run")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in args.seeds:
            if (args.out / f"s{seed}.json").is_file() and not args.force:
                print(f"[demo_seeds] seed {seed}: result exists, skipped", file=sys.stderr)
                continue
            run_seed(seed, args.out, args.overrides)
    rows = read_rows(args.out)
    text = table(rows)
    (args.out / "table.md").write_text(text)
    print(text)
    print(json.dumps({"seeds": sorted(rows), "worst": worst_of(rows),
                      "checks": {s: checks(r) for s, r in rows.items()}}))


if __name__ == "__main__":
    main()
