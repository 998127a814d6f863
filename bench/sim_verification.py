"""Verification policies against cheating providers, simulated (no network, seeded).

Usage: .venv/bin/python bench/sim_verification.py [--providers N] [--jobs N] [--json-only]

Virtual providers have a speed, price, failure rate and region; a share are cheaters who
return a wrong digest with probability p_cheat per job. Some cheaters are "sleepers": they
behave for `sleep_jobs` jobs to earn trust, then cheat, and go back to behaving after each
time they are caught. Each policy runs the same job stream:
  none        trust the first result
  redundancy  2-of-2, a 3rd (and further) replica on disagreement
  adaptive    BOINC adaptive replication (threshold 10, 1/cv) + blacklisting
"caught" = wrong results that were not accepted; "extra compute" = result-producing runs
beyond one per job. The baseline (none) runs in the same process on the same stream.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.verification import Policy, exact

AUDIT_DEPTH = 64  # unverified results remembered per peer for the audit on a catch
REGIONS = ("eu", "us", "asia", "sa", "af")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """A virtual provider."""

    id: str
    speed: float
    price: float
    fail_rate: float
    region: str
    kind: str  # "honest" | "cheater" | "sleeper"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """The simulated market and job stream."""

    providers: int = 5000
    jobs: int = 50_000
    cheaters: float = 0.2
    p_cheat: float = 0.5
    sleepers: float = 0.25  # share of the cheaters that build trust first
    sleep_jobs: int = 20
    rate: float = 5.0  # jobs per simulated second
    assign: str = "random"  # or "cheapest": cheapest of 8 random eligible providers
    collude: bool = False  # cheaters return the same wrong digest for a job
    seed: int = 1


@dataclasses.dataclass(slots=True)
class Counts:
    """Counters over a span of jobs."""

    jobs: int = 0
    runs: int = 0
    failed_runs: int = 0
    cost: float = 0.0
    wrong: int = 0
    wrong_accepted: int = 0
    jobs_wrong: int = 0
    unresolved: int = 0
    sleeper_wrong: int = 0
    sleeper_wrong_accepted: int = 0
    audit_runs: int = 0
    recovered: int = 0

    def report(self) -> dict[str, float | int | None]:
        """Shares and percentages for the report."""
        def share(a: int, b: int) -> float | None:
            return None if b == 0 else round(a / b, 5)

        caught = share(self.wrong - self.wrong_accepted, self.wrong)
        return {
            "jobs": self.jobs,
            "wrong_results": self.wrong,
            "wrong_accepted": self.wrong_accepted,
            "accepted_share": share(self.wrong_accepted, self.wrong),
            "caught_share": caught,
            "jobs_with_wrong_answer_per_1000": round(1000 * self.jobs_wrong / self.jobs, 3),
            "unresolved_jobs": self.unresolved,
            "extra_compute_pct": round(100 * (self.runs - self.jobs) / self.jobs, 2),
            "failed_runs": self.failed_runs,
            "cost_per_job": round(self.cost / self.jobs, 4),
            "sleeper_wrong_results": self.sleeper_wrong,
            "sleeper_slip_share": share(self.sleeper_wrong_accepted, self.sleeper_wrong),
            "audit_compute_pct": round(100 * self.audit_runs / self.jobs, 2),
            "recovered_by_audit": self.recovered,
            "caught_share_after_audit": share(
                self.wrong - self.wrong_accepted + self.recovered, self.wrong),
        }


def make_providers(cfg: SimConfig, rng: random.Random) -> list[Provider]:
    """The market: honest providers, cheaters and sleepers with random traits."""
    n_cheat = round(cfg.providers * cfg.cheaters)
    n_sleep = round(n_cheat * cfg.sleepers)
    kinds = ["sleeper"] * n_sleep + ["cheater"] * (n_cheat - n_sleep)
    kinds += ["honest"] * (cfg.providers - n_cheat)
    rng.shuffle(kinds)
    return [Provider(id=f"p{i}", speed=rng.lognormvariate(0.0, 0.5),
                     price=round(rng.uniform(0.1, 2.0), 3), fail_rate=rng.uniform(0.0, 0.05),
                     region=rng.choice(REGIONS), kind=kind)
            for i, kind in enumerate(kinds)]


def simulate(cfg: SimConfig, mode: str) -> dict[str, object]:
    """Run the job stream under one policy; returns whole-run and last-half counts."""
    rng = random.Random(cfg.seed)
    providers = make_providers(cfg, rng)
    rng = random.Random(f"{cfg.seed}/{mode}")  # same market, independent draws per policy
    policy = {"none": Policy.none, "redundancy": Policy.redundancy,
              "adaptive": Policy.adaptive}[mode]()
    blacklisting = mode == "adaptive"
    tracker = policy.tracker
    # sleepers: honest jobs still to do before cheating; reset when caught
    honest_left = {p.id: cfg.sleep_jobs for p in providers if p.kind == "sleeper"}
    kind_of = {p.id: p.kind for p in providers}
    whole, late = Counts(), Counts()
    # caller-side audit: a peer's recent unreplicated accepted results, re-run when caught
    unverified: dict[str, deque[bool]] = {}

    def pick(now: float, used: set[str], cheapest: bool) -> Provider:
        best: Provider | None = None
        draws = 0
        while True:
            p = providers[rng.randrange(len(providers))]
            if p.id in used or (blacklisting and tracker.is_blacklisted(p.id, now)):
                continue
            if best is None or p.price < best.price:
                best = p
            draws += 1
            if not cheapest or draws >= 8:
                return best

    for job in range(cfg.jobs):
        now = job / cfg.rate
        spans = (whole, late) if job >= cfg.jobs // 2 else (whole,)
        used: set[str] = set()
        results: list[tuple[str, Mapping[str, str]]] = []
        wrong_by: dict[str, bool] = {}

        def run_one(first: bool, *, now: float = now, job: int = job,
                    used: set[str] = used, results: list[tuple[str, Mapping[str, str]]]
                    = results, wrong_by: dict[str, bool] = wrong_by,
                    spans: tuple[Counts, ...] = spans) -> Provider:
            while True:
                p = pick(now, used, first and cfg.assign == "cheapest")
                used.add(p.id)
                for c in spans:
                    c.cost += p.price / p.speed
                if rng.random() < p.fail_rate:
                    for c in spans:
                        c.failed_runs += 1
                    continue
                if p.kind == "sleeper" and honest_left[p.id] > 0:
                    honest_left[p.id] -= 1
                    cheat = False
                else:
                    cheat = p.kind != "honest" and rng.random() < cfg.p_cheat
                digest = (f"bad-{job}" if cfg.collude else f"bad-{job}-{p.id}") if cheat \
                    else f"ok-{job}"
                results.append((p.id, {"out": digest}))
                wrong_by[p.id] = cheat
                for c in spans:
                    c.runs += 1
                    c.wrong += cheat
                    c.sleeper_wrong += cheat and p.kind == "sleeper"
                return p

        first = run_one(True)
        planned = policy.plan(first.id, rng)
        for _ in range(planned - 1):
            run_one(False)
        verdict = policy.judge(results, planned=planned, same=exact, now=now)
        while policy.needs_more(verdict, len(results)):
            run_one(False)
            verdict = policy.judge(results, planned=planned, same=exact, now=now)
        for peer in verdict.disagreeing:
            if kind_of[peer] == "sleeper":
                honest_left[peer] = cfg.sleep_jobs  # caught: behave again to rebuild trust
            audit = unverified.pop(peer, deque())
            for c in spans:
                c.audit_runs += len(audit)
                c.recovered += sum(audit)
        if planned == 1 and mode == "adaptive" and verdict.accepted is not None:
            unverified.setdefault(first.id, deque(maxlen=AUDIT_DEPTH)).append(
                wrong_by[first.id])
        for c in spans:
            c.jobs += 1
            if verdict.accepted is None:
                c.unresolved += 1
                continue
            bad = [peer for peer in verdict.agreeing if wrong_by[peer]]
            c.wrong_accepted += len(bad)
            c.jobs_wrong += bool(bad)
            c.sleeper_wrong_accepted += sum(kind_of[peer] == "sleeper" for peer in bad)
    return {"whole_run": whole.report(), "last_half": late.report(),
            "tracked_peers": len(tracker)}


def run_all(cfg: SimConfig) -> dict[str, object]:
    """All three policies on the same market and job stream."""
    return {"config": dataclasses.asdict(cfg),
            "policies": {mode: simulate(cfg, mode)
                         for mode in ("none", "redundancy", "adaptive")}}


def table(result: Mapping[str, object]) -> str:
    """A markdown table of one scenario."""
    policies = result["policies"]
    assert isinstance(policies, dict)
    rows = ["| policy | span | wrong results | accepted | caught | wrong answers / 1000 jobs "
            "| extra compute | sleeper slip | caught after audit (audit compute) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode, spans in policies.items():
        for span in ("whole_run", "last_half"):
            r = spans[span]

            def pct(x: object) -> str:
                return "n/a" if x is None else f"{100 * float(str(x)):.2f}%"

            rows.append(f"| {mode} | {span} | {r['wrong_results']} | {r['wrong_accepted']} | "
                        f"{pct(r['caught_share'])} | {r['jobs_with_wrong_answer_per_1000']} | "
                        f"{r['extra_compute_pct']}% | {pct(r['sleeper_slip_share'])} | "
                        f"{pct(r['caught_share_after_audit'])} ({r['audit_compute_pct']}%) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the default scenario and a dense one (fewer providers, reputations settle)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--providers", type=int, default=5000)
    ap.add_argument("--dense-providers", type=int, default=500,
                    help="providers in the second scenario (0 to skip)")
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--cheaters", type=float, default=0.2)
    ap.add_argument("--p-cheat", type=float, default=0.5)
    ap.add_argument("--sleepers", type=float, default=0.25)
    ap.add_argument("--sleep-jobs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--assign", choices=("random", "cheapest"), default="random")
    ap.add_argument("--collude", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-only", action="store_true")
    a = ap.parse_args(argv)
    base = SimConfig(providers=a.providers, jobs=a.jobs, cheaters=a.cheaters,
                     p_cheat=a.p_cheat, sleepers=a.sleepers, sleep_jobs=a.sleep_jobs,
                     rate=a.rate, assign=a.assign, collude=a.collude, seed=a.seed)
    configs = {"default": base}
    if a.dense_providers:
        configs["dense"] = dataclasses.replace(base, providers=a.dense_providers)
        configs["dense_no_sleepers"] = dataclasses.replace(configs["dense"], sleepers=0.0)
    t0 = time.perf_counter()
    out: dict[str, object] = {name: run_all(cfg) for name, cfg in configs.items()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2))
    if not a.json_only:
        for name in configs:
            scenario = out[name]
            assert isinstance(scenario, dict)
            cfg = configs[name]
            print(f"\n### {name}: {cfg.providers} providers, {cfg.jobs} jobs, "
                  f"sleepers {cfg.sleepers:.0%} of cheaters\n",
                  file=sys.stderr)
            print(table(scenario), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
