"""Seeded arrival traces for the autoscaling benchmark.

Every distribution is stated here (bench/autoscale/README.md repeats them):

- Models: `MODELS` models, popularity Zipf with exponent `ZIPF_S` over their rank. Each model
  has a class that fixes the VRAM one resident copy holds, the working VRAM its jobs reserve
  beside it, and how long they take: `CLASSES`.
- Job duration (inference alone on a GPU): lognormal, median `DURATION_MEDIAN_S` and sigma
  `DURATION_SIGMA`, times the class factor; a fraction `LONG_JOB_SHARE` of jobs are long
  (Pareto, scale `LONG_JOB_SCALE_S`, shape `LONG_JOB_ALPHA`); all capped at `MAX_DURATION_S`.
- Arrivals: `bursty` (a trickle plus batch submissions of one model), `diurnal` (a day of
  Poisson arrivals whose rate follows the clock), `sessions` (people trying models: short
  runs of jobs separated by long lulls, so the pool often sits at zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GiB = 1024**3

MODELS = 24
ZIPF_S = 1.1

# class: (share of models, model VRAM, job working VRAM, duration factor). A job holds its
# model's copy and its own working VRAM: 6, 11 and 20 GiB in all.
CLASSES = {
    "sd15": (0.5, 2 * GiB, 4 * GiB, 0.6),
    "sdxl": (0.35, 7 * GiB, 4 * GiB, 1.0),
    "flux": (0.15, 12 * GiB, 8 * GiB, 2.0),
}

DURATION_MEDIAN_S = 10.0
DURATION_SIGMA = 0.7
LONG_JOB_SHARE = 0.05
LONG_JOB_SCALE_S = 60.0
LONG_JOB_ALPHA = 1.5
MAX_DURATION_S = 1800.0


@dataclass(frozen=True)
class TraceJob:
    id: int
    arrival: float  # seconds from the start of the trace
    model: str
    vram: int  # bytes of working VRAM the job reserves beside its model
    work: float  # seconds of inference with the GPU to itself
    model_vram: int  # bytes one resident copy of its model holds

    @property
    def total_vram(self) -> int:
        """What the job holds on a GPU where its model is not shared: model plus working VRAM."""
        return self.model_vram + self.vram


@dataclass(frozen=True)
class Trace:
    name: str
    horizon: float  # seconds: arrivals fall in [0, horizon)
    jobs: tuple[TraceJob, ...]  # by arrival


@dataclass(frozen=True)
class Catalog:
    names: tuple[str, ...]
    model_vram: tuple[int, ...]
    vram: tuple[int, ...]  # job working VRAM
    speed: tuple[float, ...]  # duration factor
    popularity: np.ndarray  # probabilities, Zipf over rank


def catalog(rng: np.random.Generator) -> Catalog:
    kinds = list(CLASSES)
    shares = np.array([CLASSES[k][0] for k in kinds])
    picks = rng.choice(len(kinds), size=MODELS, p=shares / shares.sum())
    weights = 1.0 / np.arange(1, MODELS + 1) ** ZIPF_S
    return Catalog(
        names=tuple(f"{kinds[k]}-{i:02d}" for i, k in enumerate(picks)),
        model_vram=tuple(CLASSES[kinds[k]][1] for k in picks),
        vram=tuple(CLASSES[kinds[k]][2] for k in picks),
        speed=tuple(CLASSES[kinds[k]][3] for k in picks),
        popularity=weights / weights.sum(),
    )


def durations(rng: np.random.Generator, n: int) -> np.ndarray:
    base = DURATION_MEDIAN_S * np.exp(DURATION_SIGMA * rng.standard_normal(n))
    long = LONG_JOB_SCALE_S * (1.0 + rng.pareto(LONG_JOB_ALPHA, n))
    return np.minimum(np.where(rng.random(n) < LONG_JOB_SHARE, long, base), MAX_DURATION_S)


def _trace(name: str, horizon: float, arrivals: np.ndarray, models: np.ndarray, cat: Catalog, rng) -> Trace:
    order = np.argsort(arrivals, kind="stable")
    arrivals, models = arrivals[order], models[order]
    work = durations(rng, len(arrivals))
    jobs = tuple(
        TraceJob(
            id=i,
            arrival=float(a),
            model=cat.names[m],
            vram=cat.vram[m],
            work=float(w * cat.speed[m]),
            model_vram=cat.model_vram[m],
        )
        for i, (a, m, w) in enumerate(zip(arrivals, models, work, strict=True))
    )
    return Trace(name=name, horizon=horizon, jobs=jobs)


def bursty(seed: int, hours: float = 6.0) -> Trace:
    """One job a minute on average, plus batches: every ~25 min (exponential gaps), 20-120 jobs
    within 30-180 s, 80% of them for one model."""
    rng = np.random.default_rng(seed)
    cat = catalog(rng)
    horizon = hours * 3600
    trickle = rng.uniform(0, horizon, rng.poisson(horizon / 60))
    arrivals, models = [trickle], [rng.choice(MODELS, len(trickle), p=cat.popularity)]
    t = rng.exponential(25 * 60)
    while t < horizon:
        n, spread = int(rng.integers(20, 121)), rng.uniform(30, 180)
        main = rng.choice(MODELS, p=cat.popularity)
        arrivals.append(t + rng.uniform(0, spread, n))
        models.append(np.where(rng.random(n) < 0.8, main, rng.choice(MODELS, n, p=cat.popularity)))
        t += spread + rng.exponential(25 * 60)
    a, m = np.concatenate(arrivals), np.concatenate(models)
    keep = a < horizon
    return _trace("bursty", horizon, a[keep], m[keep], cat, rng)


def diurnal(seed: int, hours: float = 24.0, peak_per_s: float = 0.3, trough_per_s: float = 0.005) -> Trace:
    """Poisson arrivals whose rate follows the clock: lowest at 04:00, highest at 16:00."""
    rng = np.random.default_rng(seed)
    cat = catalog(rng)
    horizon = hours * 3600
    # Thinning: candidates at the peak rate, each kept with rate(t) / peak.
    candidates = rng.uniform(0, horizon, rng.poisson(horizon * peak_per_s))
    phase = np.cos(2 * math.pi * (candidates / 86400 - 16 / 24))  # 1 at 16:00, -1 at 04:00
    rate = trough_per_s + (peak_per_s - trough_per_s) * (1 + phase) / 2
    a = candidates[rng.random(len(candidates)) < rate / peak_per_s]
    return _trace("diurnal", horizon, a, rng.choice(MODELS, len(a), p=cat.popularity), cat, rng)


def sessions(seed: int, hours: float = 12.0, mean_gap_s: float = 600.0) -> Trace:
    """People trying models: a session every ~10 min (exponential gaps) of 1-12 jobs for one
    model, 5-60 s apart (think time)."""
    rng = np.random.default_rng(seed)
    cat = catalog(rng)
    horizon = hours * 3600
    arrivals, models = [], []
    t = rng.exponential(mean_gap_s)
    while t < horizon:
        n = int(rng.integers(1, 13))
        arrivals.append(t + np.cumsum(np.concatenate([[0.0], rng.uniform(5, 60, n - 1)])))
        models.append(np.full(n, rng.choice(MODELS, p=cat.popularity)))
        t += rng.exponential(mean_gap_s)
    a, m = np.concatenate(arrivals), np.concatenate(models)
    keep = a < horizon
    return _trace("sessions", horizon, a[keep], m[keep], cat, rng)


TRACES = {"bursty": bursty, "diurnal": diurnal, "sessions": sessions}
