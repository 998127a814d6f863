"""Verification policies against cheating providers, simulated (no network, seeded).

Usage: .venv/bin/python bench/sim_verification.py [--providers N] [--jobs N] [--json-only]

Virtual providers have a speed, price, failure rate and region; a share are cheaters who
return a wrong digest with probability p_cheat per job. Some cheaters are "sleepers" that
behave until trusted, then cheat, and behave again after each catch. Two sleeper models:
  jobs     behave for `sleep_jobs` jobs (the original model)
  trusted  behave until the requester checks them only at the floor probability (they are
           told their own trust state: the worst case)
Each policy runs the same job stream:
  none        trust the first result
  redundancy  2-of-2, a 3rd (and further) replica on disagreement
  adaptive    BOINC adaptive replication (threshold 10, 1/cv, floor 0.05) + blacklisting
  escrow      adaptive + `Escrow`: unreplicated results are held unpaid for `hold_s`; a
              caught provider's held results are seized and re-run as new jobs (the
              re-runs are verified like any job and may land on cheaters too)
Counts cover the jobs of the measured span; the stream then goes on for a drain of
`rate * hold_s` jobs (not counted) so every held result either settles or is seized.
"caught" = wrong results rejected by a quorum or seized before they settled; wrong
results still held at the very end are reported as pending and counted as not caught.
"extra compute" = result-producing runs beyond one per job, re-runs included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.verification import Escrow, Policy, TrustTracker, exact

REGIONS = ("eu", "us", "asia", "sa", "af")
MODES = ("none", "redundancy", "adaptive", "escrow")


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
    sleeper_mode: str = "jobs"  # or "trusted"
    sleep_jobs: int = 20
    rate: float = 5.0  # jobs per simulated second
    hold_s: float = 2000.0  # escrow hold
    assign: str = "random"  # or "cheapest": cheapest of 8 random eligible providers
    collude: bool = False  # cheaters return the same wrong digest for a job
    seed: int = 1


@dataclasses.dataclass(slots=True)
class Counts:
    """Counters over the measured span."""

    jobs: int = 0
    runs: int = 0
    redo_runs: int = 0
    failed_runs: int = 0
    cost: float = 0.0
    wrong: int = 0
    caught_quorum: int = 0
    seized: int = 0
    slipped: int = 0
    pending: int = 0
    unresolved: int = 0
    sleeper_wrong: int = 0
    sleeper_slipped: int = 0

    def report(self) -> dict[str, float | int | None]:
        """Shares and percentages for the report."""
        def share(a: int, b: int) -> float | None:
            return None if b == 0 else round(a / b, 5)

        caught = self.caught_quorum + self.seized
        return {
            "jobs": self.jobs,
            "wrong_results": self.wrong,
            "caught_by_quorum": self.caught_quorum,
            "seized_from_escrow": self.seized,
            "slipped": self.slipped,
            "pending_at_end": self.pending,
            "caught_share": share(caught, self.wrong),
            "wrong_accepted": self.slipped + self.pending,
            "accepted_share": share(self.slipped + self.pending, self.wrong),
            "unresolved_jobs": self.unresolved,
            "extra_compute_pct": round(100 * (self.runs - self.jobs) / max(self.jobs, 1), 2),
            "rerun_compute_pct": round(100 * self.redo_runs / max(self.jobs, 1), 2),
            "failed_runs": self.failed_runs,
            "cost_per_job": round(self.cost / max(self.jobs, 1), 4),
            "sleeper_wrong_results": self.sleeper_wrong,
            "sleeper_slip_share": share(self.sleeper_slipped, self.sleeper_wrong),
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


class Cheating:
    """Whether a provider cheats on its next job (the sleeper models live here)."""

    def __init__(self, cfg: SimConfig, kinds: Mapping[str, str], tracker: TrustTracker,
                 rng: random.Random) -> None:
        self.cfg, self.tracker, self.rng = cfg, tracker, rng
        self.kind = dict(kinds)
        self.honest_left = {p: cfg.sleep_jobs for p, k in kinds.items() if k == "sleeper"}

    def cheats(self, peer: str) -> bool:
        kind = self.kind[peer]
        if kind == "honest":
            return False
        if kind == "sleeper":
            if self.cfg.sleeper_mode == "trusted":
                floor = self.tracker.min_probability
                if self.tracker.replicate_probability(peer) > floor:
                    return False
            elif self.honest_left[peer] > 0:
                self.honest_left[peer] -= 1
                return False
        return self.rng.random() < self.cfg.p_cheat

    def caught(self, peer: str) -> None:
        if peer in self.honest_left:
            self.honest_left[peer] = self.cfg.sleep_jobs  # behave again to rebuild trust


# a held result: (counted in the measured span, wrong, by a sleeper)
Held = tuple[bool, bool, bool]


def simulate(cfg: SimConfig, mode: str) -> dict[str, object]:
    """Run the job stream under one policy; returns whole-run and measured-span counts."""
    rng = random.Random(cfg.seed)
    providers = make_providers(cfg, rng)
    rng = random.Random(f"{cfg.seed}/{mode}")  # same market, independent draws per policy
    policy = {"none": Policy.none, "redundancy": Policy.redundancy,
              "adaptive": Policy.adaptive, "escrow": Policy.adaptive}[mode]()
    tracker = policy.tracker
    blacklisting = mode in ("adaptive", "escrow")
    escrow: Escrow[Held] | None = Escrow(hold_s=cfg.hold_s) if mode == "escrow" else None
    cheating = Cheating(cfg, {p.id: p.kind for p in providers}, tracker, rng)
    whole, late = Counts(), Counts()
    drain = math.ceil(cfg.rate * cfg.hold_s) if escrow is not None else 0
    redo: deque[bool] = deque()  # seized results to re-run: counted span or not

    def spans(counted: bool) -> tuple[Counts, ...]:
        return (whole, late) if counted else (whole,)

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

    def run_job(job: int, now: float, counted: bool, is_redo: bool) -> None:
        used: set[str] = set()
        results: list[tuple[str, Mapping[str, str]]] = []
        wrong_by: dict[str, bool] = {}
        sp = spans(counted)

        def run_one(first: bool) -> Provider:
            while True:
                p = pick(now, used, first and cfg.assign == "cheapest")
                used.add(p.id)
                for c in sp:
                    c.cost += p.price / p.speed
                if rng.random() < p.fail_rate:
                    for c in sp:
                        c.failed_runs += 1
                    continue
                cheat = cheating.cheats(p.id)
                digest = (f"bad-{job}" if cfg.collude else f"bad-{job}-{p.id}") if cheat \
                    else f"ok-{job}"
                results.append((p.id, {"out": digest}))
                wrong_by[p.id] = cheat
                for c in sp:
                    c.runs += 1
                    c.redo_runs += is_redo
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
        for c in sp:
            c.jobs += not is_redo
            c.unresolved += verdict.accepted is None
            c.caught_quorum += sum(wrong_by[p] for p in (
                verdict.disagreeing if verdict.accepted is not None else wrong_by))
        for peer in verdict.disagreeing:
            cheating.caught(peer)
            if escrow is not None:
                for was_counted, wrong, _ in escrow.seize(peer):
                    redo.append(was_counted)
                    for c in spans(was_counted):
                        c.seized += wrong
        if verdict.accepted is None:
            return
        if escrow is not None and len(verdict.providers) == 1:
            sleeper = cheating.kind[first.id] == "sleeper"
            for peer, item in escrow.hold(first.id, (counted, wrong_by[first.id], sleeper),
                                          now):
                settle(peer, item)
            return
        for peer in verdict.agreeing:  # verified (or unchecked without escrow): final
            settle(peer, (counted, wrong_by[peer], cheating.kind[peer] == "sleeper"))

    def settle(peer: str, item: Held) -> None:
        counted, wrong, sleeper = item
        for c in spans(counted):
            c.slipped += wrong
            c.sleeper_slipped += wrong and sleeper

    for job in range(cfg.jobs + drain):
        now = job / cfg.rate
        if escrow is not None:
            for peer, item in escrow.settle(now):
                settle(peer, item)
        while redo:
            run_job(job, now, redo.popleft(), True)
        run_job(job, now, cfg.jobs // 2 <= job < cfg.jobs, False)
    if escrow is not None:
        for peer in {p.id for p in providers}:
            for counted, wrong, sleeper in escrow.seize(peer):
                for c in spans(counted):
                    c.pending += wrong
                    c.sleeper_slipped += wrong and sleeper
    return {"whole_run": whole.report(), "last_half": late.report(),
            "drain_jobs": drain, "tracked_peers": len(tracker)}


def run_all(cfg: SimConfig, modes: tuple[str, ...] = MODES) -> dict[str, object]:
    """The policies on the same market and job stream."""
    return {"config": dataclasses.asdict(cfg),
            "policies": {mode: simulate(cfg, mode) for mode in modes}}


def table(result: Mapping[str, object]) -> str:
    """A markdown table of one scenario (the measured span)."""
    policies = result["policies"]
    assert isinstance(policies, dict)
    rows = ["| policy | wrong results | caught (quorum + seized) | slipped + pending "
            "| extra compute (re-runs) | sleeper slip |",
            "| --- | --- | --- | --- | --- | --- |"]
    for mode, spans in policies.items():
        r = spans["last_half"]

        def pct(x: object) -> str:
            return "n/a" if x is None else f"{100 * float(str(x)):.2f}%"

        rows.append(f"| {mode} | {r['wrong_results']} | {pct(r['caught_share'])} "
                    f"({r['caught_by_quorum']} + {r['seized_from_escrow']}) | "
                    f"{r['slipped']} + {r['pending_at_end']} | {r['extra_compute_pct']}% "
                    f"({r['rerun_compute_pct']}%) | {pct(r['sleeper_slip_share'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; JSON on stdout, tables on stderr."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--providers", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--cheaters", type=float, default=0.2)
    ap.add_argument("--p-cheat", type=float, default=0.5)
    ap.add_argument("--sleepers", type=float, default=0.25)
    ap.add_argument("--sleep-jobs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--hold-s", type=float, default=2000.0)
    ap.add_argument("--assign", choices=("random", "cheapest"), default="random")
    ap.add_argument("--collude", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="only the main scenarios")
    ap.add_argument("--json-only", action="store_true")
    a = ap.parse_args(argv)
    base = SimConfig(providers=a.providers, jobs=a.jobs, cheaters=a.cheaters,
                     p_cheat=a.p_cheat, sleepers=a.sleepers, sleep_jobs=a.sleep_jobs,
                     rate=a.rate, hold_s=a.hold_s, assign=a.assign, collude=a.collude,
                     seed=a.seed)
    configs = {"sleepers_jobs": base,
               "sleepers_trusted": dataclasses.replace(base, sleeper_mode="trusted"),
               "no_sleepers": dataclasses.replace(base, sleepers=0.0)}
    if not a.quick:
        configs["all_sleepers_trusted"] = dataclasses.replace(
            base, sleepers=1.0, sleeper_mode="trusted")
        configs["hold_half"] = dataclasses.replace(base, hold_s=base.hold_s / 2)
        configs["hold_double"] = dataclasses.replace(base, hold_s=base.hold_s * 2)
        configs["providers_x2.5"] = dataclasses.replace(  # reputations not yet settled
            base, providers=round(2.5 * base.providers))
    t0 = time.perf_counter()
    out: dict[str, object] = {name: run_all(cfg) for name, cfg in configs.items()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2))
    if not a.json_only:
        for name, cfg in configs.items():
            scenario = out[name]
            assert isinstance(scenario, dict)
            per = cfg.rate * cfg.hold_s / cfg.providers
            print(f"\n### {name}: {cfg.providers} providers, {cfg.jobs} jobs (last half "
                  f"measured), sleepers {cfg.sleepers:.0%} of cheaters ({cfg.sleeper_mode}),"
                  f" hold {cfg.hold_s:g} s = ~{per:.0f} jobs per provider\n",
                  file=sys.stderr)
            print(table(scenario), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
