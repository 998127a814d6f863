"""A market of virtual providers: jobs placed by `scheduler` scoring vs an oracle (seeded).

Usage: .venv/bin/python bench/sim_market.py [--providers N] [--jobs N] [--seed S] [--json]

Providers have one GPU with a true speed (10 % advertise twice their speed), a price, a
place (Vivaldi coordinates; the true RTT is what the coordinates predict plus noise), a
failure rate (they vanish mid-job and stay offline for a while; 10 % are flaky), cached
datasets, and a kind: honest, cheater or sleeper (as in sim_verification). Jobs arrive as
a Poisson stream, each with GFLOPs, one input dataset, a deadline and a budget.

Placers, each on its own copy of the market, same jobs, same failure draws:
  scoring   an `OfferBook` of every ad ranked by `DefaultStrategy` with Observations the
            requester learns on the way (RTT after first contact, reputation from
            successes, failures and catches); busy providers advertise load 0.9
  cheapest  the lowest advertised GPU price among free providers
  oracle    knows true speeds, failure rates, RTTs and who cheats: the lowest expected
            (cost + value of time) / (1 - failure rate), never a cheater, no verification
scoring and cheapest verify with adaptive replication + `Escrow` (a caught provider's
held results are re-run and not paid). A failed run is not paid and is retried on the
next candidate while the deadline and the budget allow; a job is never paid twice.
Reports cost, makespan and mean latency as ratios to the oracle, deadlines met,
verification overhead (replica and re-run GPU-seconds over one run per job), failures,
and the share of wrong results caught.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sim_verification import Cheating, SimConfig
from protocol import CapacityAd, Device, Identity, Price, Resources, Runtime
from scheduler.book import OfferBook
from scheduler.pricing import GB, MICRO, total
from scheduler.scoring import DefaultStrategy, JobEstimate, Observations
from scheduler.verification import Escrow, Policy, exact
from scheduler.vivaldi import Coord, estimate_rtt_ms, to_ad

CENTERS = ((0.0, 0.0), (80.0, 10.0), (-60.0, 70.0), (150.0, -90.0), (-120.0, -60.0))
VOT = DefaultStrategy().value_of_time_credits_per_s
CPUS, MEM_MB = 4, 16384


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MarketConfig:
    """The simulated market and job stream."""

    providers: int = 2000
    jobs: int = 6000
    rate: float = 1.0  # jobs per second
    cheaters: float = 0.2
    p_cheat: float = 0.5
    sleepers: float = 0.25
    overstate: float = 0.1  # share advertising twice their true speed
    flaky: float = 0.1  # share failing 10-30 % of jobs (others 0-2 %)
    hold_s: float = 3000.0
    detect_s: float = 30.0  # how long until a vanished provider is noticed
    offline_s: float = 900.0
    bandwidth_mbps: float = 1000.0
    seed: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    arrival: float
    gflop: float
    dataset: str
    size: int
    deadline: float
    budget: float


class Market:
    """The true providers, their ads, and the jobs (shared by every placer)."""

    def __init__(self, cfg: MarketConfig) -> None:
        rng = random.Random(cfg.seed)
        n = cfg.providers
        self.cfg = cfg
        self.datasets = [f"{i:064x}" for i in range(30)]
        self.local = Coord(x=5.0, y=5.0, height=2.0, error=0.2)
        n_cheat = round(n * cfg.cheaters)
        n_sleep = round(n_cheat * cfg.sleepers)
        kinds = ["sleeper"] * n_sleep + ["cheater"] * (n_cheat - n_sleep)
        kinds += ["honest"] * (n - n_cheat)
        rng.shuffle(kinds)
        self.kinds = kinds
        self.speed = np.array([rng.lognormvariate(math.log(20_000), 0.5) for _ in range(n)])
        adv = self.speed * np.array([rng.lognormvariate(0, 0.1) for _ in range(n)])
        self.adv = np.where(np.array([rng.random() < cfg.overstate for _ in range(n)]),
                            2 * self.speed, adv)
        self.fail = np.array([rng.uniform(0.1, 0.3) if rng.random() < cfg.flaky
                              else rng.uniform(0.0, 0.02) for _ in range(n)])
        # price per GPU-second follows the advertised speed, +-50 %
        self.gpu_price = [int(self.adv[i] / 20 * rng.uniform(0.5, 1.5)) for i in range(n)]
        self.prices = [Price(start=1000, per_gpu_second=p, per_cpu_second=5,
                             per_gb_transfer=20_000) for p in self.gpu_price]
        self.gpu_array = np.array(self.gpu_price, dtype=float)
        coords, self.rtt = [], np.zeros(n)
        for i in range(n):
            cx, cy = rng.choice(CENTERS)
            c = Coord(x=cx + rng.gauss(0, 15), y=cy + rng.gauss(0, 15),
                      height=rng.uniform(1, 10), error=0.2)
            coords.append(c)
            self.rtt[i] = estimate_rtt_ms(self.local, c) * rng.lognormvariate(0, 0.2)
        self.cached = [frozenset(rng.sample(self.datasets, rng.randrange(0, 4)))
                       for _ in range(n)]
        self.peers = [Identity(rng.randbytes(32)).peer_id for _ in range(n)]
        self.index = {p: i for i, p in enumerate(self.peers)}
        self.coords = coords
        self.ads = [[self._ad(i, coords[i], load) for load in (0.0, 0.9)] for i in range(n)]
        t, self.jobs = 0.0, []
        for _ in range(cfg.jobs):
            t += rng.expovariate(cfg.rate)
            gflop = rng.lognormvariate(math.log(4e6), 1.0)
            nominal = gflop / 20_000
            self.jobs.append(Job(arrival=t, gflop=gflop, dataset=rng.choice(self.datasets),
                                 size=int(rng.lognormvariate(math.log(2e9), 1.0)),
                                 deadline=t + 60 + 4 * nominal,
                                 budget=3 * (1020 * nominal + 41_000) / MICRO))
        self.cached_m = np.array([[d in c for d in self.datasets] for c in self.cached])
        self.ds_index = {d: j for j, d in enumerate(self.datasets)}

    def _ad(self, i: int, c: Coord, load: float) -> CapacityAd:
        return CapacityAd(
            peer_id=self.peers[i], addrs=("/ip4/10.0.0.1/tcp/4001",),
            devices=(Device(kind="cuda", model="g", memory_mb=81920, compute_capability="9.0",
                            count=1, gflops=float(self.adv[i])),),
            cpus=16, memory_mb=131072,
            runtimes=(Runtime(name="python3", version="3.11", packages={}, digest=""),),
            price=self.prices[i], sandbox_tier="A", region="", coords=to_ad(c),
            cached=tuple(sorted(self.cached[i])), load=load, seq=1, expires=2**53 - 1)

    def true_all(self, job: Job) -> tuple[np.ndarray, np.ndarray]:
        """True run seconds and cost of the job on every provider (numpy)."""
        missing = np.where(self.cached_m[:, self.ds_index[job.dataset]], 0.0, job.size)
        run = (self.rtt / 1000 + missing * 8 / (self.cfg.bandwidth_mbps * 1e6)
               + job.gflop / self.speed)
        variable = (5 * CPUS * run + self.gpu_array * run + 20_000 * (missing / GB))
        return run, (1000 + np.ceil(variable)) / MICRO

    def estimate(self, i: int, job: Job) -> tuple[float, float]:
        """What a requester expects from the ad: seconds and cost."""
        missing = 0 if job.dataset in self.cached[i] else job.size
        run = (estimate_rtt_ms(self.local, self.coords[i]) / 1000
               + missing * 8 / (self.cfg.bandwidth_mbps * 1e6) + job.gflop / self.adv[i])
        return run, self.cost(i, run, missing)

    def run_s(self, i: int, job: Job) -> tuple[float, int]:
        """True seconds a run takes on provider i (transfer + compute), bytes moved."""
        missing = 0 if job.dataset in self.cached[i] else job.size
        transfer = missing * 8 / (self.cfg.bandwidth_mbps * 1e6)
        return self.rtt[i] / 1000 + transfer + job.gflop / self.speed[i], missing

    def cost(self, i: int, seconds: float, missing: int) -> float:
        return total(self.prices[i], cpu_s=CPUS * seconds, gpu_s=seconds,
                     gb_s=MEM_MB / 1024 * seconds, gb=missing / GB) / MICRO

    def failure(self, job: int, i: int) -> float | None:
        """The share of the run after which provider i vanishes on this job, or None."""
        r = random.Random((self.cfg.seed << 48) ^ (job << 20) ^ i)
        return r.random() if r.random() < self.fail[i] else None


@dataclasses.dataclass(slots=True)
class Tally:
    cost: float = 0.0
    verify_cost: float = 0.0
    first_gpu_s: float = 0.0
    extra_gpu_s: float = 0.0
    lost_gpu_s: float = 0.0
    done: int = 0
    on_time: int = 0
    latency: float = 0.0
    makespan: float = 0.0
    failed_runs: int = 0
    gave_up: int = 0
    wrong: int = 0
    caught: int = 0
    seized: int = 0
    slipped: int = 0
    pending: int = 0


def simulate(market: Market, placer: str) -> dict[str, float | int | None]:
    """One placer over the whole job stream."""
    cfg = market.cfg
    n = cfg.providers
    free_at = np.zeros(n)
    offline_until = np.zeros(n)
    book = OfferBook(a[0] for a in market.ads)
    busy: list[tuple[float, int]] = []  # (free at, provider) whose ad says busy
    policy = Policy.adaptive()
    tracker = policy.tracker
    escrow: Escrow[tuple[int, bool, float]] = Escrow(hold_s=cfg.hold_s)
    cheat_cfg = SimConfig(p_cheat=cfg.p_cheat, sleepers=cfg.sleepers, seed=cfg.seed)
    cheating = Cheating(cheat_cfg, dict(zip(market.peers, market.kinds, strict=True)), tracker,
                        random.Random(f"{cfg.seed}/{placer}/cheat"))
    rtt_seen: dict[str, float] = {}
    rep: dict[str, float] = {}
    wins, losses = np.zeros(n), np.zeros(n)
    obs = Observations(rtt_ms=rtt_seen, reputation=rep, local_coord=market.local,
                       bandwidth_mbps=cfg.bandwidth_mbps)
    by_price = np.argsort(np.array(market.gpu_price), kind="stable")
    honest = np.array([k == "honest" for k in market.kinds])
    t = Tally()

    def learn(i: int, good: bool, weight: float = 1.0) -> None:
        (wins if good else losses)[i] += weight
        rep[market.peers[i]] = float((wins[i] + 1) / (wins[i] + losses[i] + 2))

    def candidates(job: Job, now: float) -> list[int]:
        if placer == "scoring":
            est = JobEstimate(resources=Resources(gpus=1, cpus=CPUS, memory_mb=MEM_MB,
                                                  max_seconds=7 * 86400),
                              gflop=job.gflop, input_digests=(job.dataset,),
                              input_bytes_by_digest={job.dataset: job.size})
            ranked = book.rank(est, obs, now_ms=int(now * 1000), limit=48)
            out = [market.index[a.peer_id] for a, _ in ranked]
        elif placer == "cheapest":
            free = by_price[free_at[by_price] <= now]
            out = (free if len(free) else by_price)[:48].tolist()
        else:  # oracle: expected true objective, honest providers only
            runs, costs = market.true_all(job)
            wait = np.maximum(free_at - now, 0.0)
            score = (costs + VOT * (wait + runs)) / (1 - market.fail)
            score[~honest] = np.inf
            out = np.argsort(score)[:48].tolist()
        return [i for i in out if offline_until[i] <= now
                and not tracker.is_blacklisted(market.peers[i], now)]

    def run_one(k: int, job: Job, now: float, cands: list[int],
                used: set[int]) -> tuple[int, bool, float, float] | None:
        """One result from the best unused candidate: (provider, wrong, end, cost), or
        None. A failed run is retried on the next candidate only while the expected end
        is before the deadline; no candidate whose expected cost is over budget."""
        retry = False
        while True:
            pick = next((i for i in cands if i not in used), None)
            if pick is None:
                return None
            used.add(pick)
            run, missing = market.run_s(pick, job)
            start = max(now, free_at[pick])
            exp_s, exp_cost = ((run, market.cost(pick, run, missing)) if placer == "oracle"
                               else market.estimate(pick, job))
            if exp_cost > job.budget or (retry and start + exp_s > job.deadline):
                continue
            frac = market.failure(k, pick)
            if frac is not None:
                t.failed_runs += 1
                t.lost_gpu_s += frac * run
                now = start + frac * run + cfg.detect_s
                offline_until[pick] = now + cfg.offline_s
                book.discard(market.peers[pick])
                heapq.heappush(busy, (offline_until[pick], pick))
                learn(pick, False)
                retry = True
                continue
            free_at[pick] = start + run
            book.discard(market.peers[pick])
            book.add(market.ads[pick][1])
            heapq.heappush(busy, (start + run, pick))
            rtt_seen[market.peers[pick]] = float(market.rtt[pick])
            wrong = placer != "oracle" and cheating.cheats(market.peers[pick])
            t.wrong += wrong
            return pick, wrong, start + run, market.cost(pick, run, missing)

    def place(k: int, job: Job, now: float, counted: bool) -> None:
        cands = candidates(job, now)
        used: set[int] = set()
        first = run_one(k, job, now, cands, used)
        if first is None:
            t.gave_up += counted
            return
        runs = [first]
        planned = 1 if placer == "oracle" else policy.plan(market.peers[first[0]], rng)
        verdict = None
        while placer != "oracle":
            while len(runs) < planned:
                more = run_one(k, job, now, cands, used)
                if more is None:
                    break
                runs.append(more)
            results = [(market.peers[i], {"out": f"bad-{k}-{i}" if w else f"ok-{k}"})
                       for i, w, _, _ in runs]
            verdict = policy.judge(results, planned=planned, same=exact, now=now)
            if not policy.needs_more(verdict, len(runs)) or len(runs) < planned:
                break
            planned = len(runs) + 1
        end = max(r[2] for r in runs)
        bad = set(verdict.disagreeing) if verdict is not None else set()
        accepted = verdict is None or verdict.accepted is not None
        for j, (i, wrong, _, cost) in enumerate(runs):
            run_s = market.run_s(i, job)[0]
            if j == 0 and counted:
                t.first_gpu_s += run_s
            else:
                t.extra_gpu_s += run_s
            if market.peers[i] in bad or not accepted:
                t.caught += wrong
                if market.peers[i] in bad:
                    learn(i, False, 10.0)
                    cheating.caught(market.peers[i])
                    for kk, w, c in escrow.seize(market.peers[i]):
                        t.seized += w
                        t.cost -= c  # held, never paid
                        t.verify_cost += c  # its re-run is verification cost
                        redo.append(kk)
                continue
            t.cost += cost
            t.verify_cost += cost if j or not counted else 0.0
            learn(i, True)
            if len(runs) == 1 and placer != "oracle":
                for _, held in escrow.hold(market.peers[i], (k, wrong, cost), now):
                    t.slipped += held[1]
            else:
                t.slipped += wrong
        if counted and accepted:
            t.done += 1
            t.on_time += end <= job.deadline
            t.latency += end - job.arrival
            t.makespan = max(t.makespan, end)
        elif counted:
            t.gave_up += 1

    rng = random.Random(f"{cfg.seed}/{placer}/plan")
    redo: list[int] = []
    half = Tally()
    for k, job in enumerate(market.jobs):
        now = job.arrival
        if k == len(market.jobs) // 2:
            half = dataclasses.replace(t)
        while busy and busy[0][0] <= now:
            _, i = heapq.heappop(busy)
            if free_at[i] <= now and offline_until[i] <= now:
                book.discard(market.peers[i])
                book.add(market.ads[i][0])
        for _, (_, wrong, _) in escrow.settle(now):
            t.slipped += wrong
        while redo:
            kk = redo.pop()
            place(kk, market.jobs[kk], now, False)
        place(k, job, now, True)
    for _, (_, wrong, _) in escrow.settle(math.inf):
        t.pending += wrong  # held at the end: counted as not caught
    jobs = len(market.jobs)
    return {
        "cost": round(t.cost, 2), "makespan_s": round(t.makespan - market.jobs[0].arrival, 1),
        "mean_latency_s": round(t.latency / max(t.done, 1), 1),
        "done_share": round(t.done / jobs, 4), "deadline_met_share": round(t.on_time / jobs, 4),
        "gave_up": t.gave_up, "failed_runs": t.failed_runs,
        "lost_to_failures_pct": round(100 * t.lost_gpu_s / max(t.first_gpu_s, 1e-9), 2),
        "verification_extra_compute_pct": round(100 * t.extra_gpu_s / max(t.first_gpu_s, 1e-9),
                                                2),
        "cost_excl_verification": round(t.cost - t.verify_cost, 2),
        "wrong_results": t.wrong,
        "caught_share": None if t.wrong == 0 else round((t.caught + t.seized) / t.wrong, 4),
        "last_half_verification_extra_pct": round(
            100 * (t.extra_gpu_s - half.extra_gpu_s) / max(t.first_gpu_s - half.first_gpu_s,
                                                           1e-9), 2),
        "last_half_wrong_results": t.wrong - half.wrong,
        "last_half_caught_share": None if t.wrong == half.wrong else round(
            (t.caught + t.seized - half.caught - half.seized) / (t.wrong - half.wrong), 4),
        "caught_by_quorum": t.caught, "seized": t.seized, "slipped": t.slipped,
        "pending_at_end": t.pending,
    }


def run(cfg: MarketConfig) -> dict[str, object]:
    """Every placer on the same market; ratios against the oracle."""
    t0 = time.perf_counter()
    market = Market(cfg)
    build_s = time.perf_counter() - t0
    out: dict[str, dict[str, float | int | None]] = {}
    timing: dict[str, float] = {}
    for placer in ("oracle", "scoring", "cheapest"):
        t1 = time.perf_counter()
        out[placer] = simulate(market, placer)
        timing[placer] = round(time.perf_counter() - t1, 1)
    oracle = out["oracle"]
    for placer in ("scoring", "cheapest"):
        r = out[placer]
        for key in ("cost", "makespan_s", "mean_latency_s"):
            r[f"{key}_vs_oracle"] = round(float(r[key] or 0) / float(oracle[key] or 1), 3)
        r["cost_excl_verification_vs_oracle"] = round(
            float(r["cost_excl_verification"] or 0) / float(oracle["cost"] or 1), 3)
    return {"config": dataclasses.asdict(cfg), "placers": out,
            "seconds": {"market": round(build_s, 1), **timing}}


def pct(x: object) -> str:
    return "n/a" if x is None else f"{100 * float(str(x)):.2f}%"


def table(result: dict[str, object]) -> str:
    """A markdown table of one run."""
    placers = result["placers"]
    assert isinstance(placers, dict)
    cols: list[tuple[str, Callable[[dict[str, object]], str]]] = [
        ("cost / oracle (excl. verification)", lambda r: f"{r.get('cost_vs_oracle', 1.0)} "
         f"({r.get('cost_excl_verification_vs_oracle', 1.0)})"),
        ("makespan / oracle", lambda r: str(r.get("makespan_s_vs_oracle", 1.0))),
        ("latency / oracle", lambda r: str(r.get("mean_latency_s_vs_oracle", 1.0))),
        ("deadline met", lambda r: f"{100 * float(str(r['deadline_met_share'])):.1f}%"),
        ("gave up", lambda r: str(r["gave_up"])),
        ("failed runs", lambda r: str(r["failed_runs"])),
        ("verification extra: all (last half)", lambda r:
         f"{r['verification_extra_compute_pct']}% ({r['last_half_verification_extra_pct']}%)"),
        ("wrong results", lambda r: str(r["wrong_results"])),
        ("caught: all (last half)", lambda r: f"{pct(r['caught_share'])} "
         f"({pct(r['last_half_caught_share'])})"),
    ]
    rows = ["| placer | " + " | ".join(c for c, _ in cols) + " |",
            "| --- " * (len(cols) + 1) + "|"]
    for name, r in placers.items():
        rows.append(f"| {name} | " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--providers", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--cheaters", type=float, default=0.2)
    ap.add_argument("--sleepers", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = ap.parse_args(argv)
    cfg = MarketConfig(providers=a.providers, jobs=a.jobs, rate=a.rate, cheaters=a.cheaters,
                       sleepers=a.sleepers, seed=a.seed)
    result = run(cfg)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{cfg.providers} providers, {cfg.jobs} jobs at {cfg.rate}/s, "
              f"{cfg.cheaters:.0%} cheaters ({cfg.sleepers:.0%} of them sleepers), "
              f"seconds: {result['seconds']}\n")
        print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
