"""A seeded many-model trace of image-generation jobs. Every distribution is stated here
(README.md repeats them):

- Models: `MODELS` checkpoints, popularity Zipf with exponent `ZIPF_S` over a random rank.
  `SDXL_SHARE` of them are SDXL-class (`SDXL_VRAM` resident, jobs `SDXL_WORK_S`), the rest
  SD1.5-class (`SD15_VRAM`, `SD15_WORK_S`); every job also reserves `JOB_VRAM` while it runs.
- Load time onto a GPU, per model: lognormal fitted to the published production figures,
  median `LOAD_MEDIAN_S` and p90 `LOAD_P90_S`; each load varies around its model's time by
  `LOAD_JITTER_SIGMA`. A model not yet on the worker's disk is first downloaded at
  `DOWNLOAD_BYTES_PER_S`.
- Job duration: the class's median times a lognormal of sigma `WORK_SIGMA`, times the
  images asked for (1 to 4, weights `IMAGES_WEIGHTS`).
- Arrivals: Poisson at `rate` jobs/s, plus bursts: every `BURST_EVERY_S` on average
  (exponential gaps) a burst of `BURST_LENGTH_S` at `BURST_FACTOR` times the rate, half of
  whose extra jobs go to one model drawn by popularity (a user's batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GiB = 1024**3
Z90 = 1.2815515655446004  # the standard normal's 90th percentile

MODELS = 96
ZIPF_S = 1.1
SDXL_SHARE = 0.4
SD15_VRAM, SDXL_VRAM = int(2.5 * GiB), int(7 * GiB)
SD15_WORK_S, SDXL_WORK_S = 2.5, 7.0
JOB_VRAM = 3 * GiB
WORK_SIGMA = 0.4
IMAGES_WEIGHTS = (0.6, 0.2, 0.1, 0.1)
LOAD_MEDIAN_S, LOAD_P90_S = 22.7, 42.0
LOAD_SIGMA = math.log(LOAD_P90_S / LOAD_MEDIAN_S) / Z90
LOAD_JITTER_SIGMA = 0.1
DOWNLOAD_BYTES_PER_S = 500 * 2**20
BURST_EVERY_S, BURST_LENGTH_S, BURST_FACTOR = 600.0, 60.0, 4.0


@dataclass(frozen=True)
class Model:
    name: str
    vram: int  # bytes one resident copy holds
    load_s: float  # this model's typical load time onto a GPU
    popularity: float  # share of the jobs outside bursts


@dataclass(frozen=True)
class TraceJob:
    id: int
    arrival: float  # seconds from the start
    model: str
    work_s: float  # seconds of inference


@dataclass(frozen=True)
class Trace:
    models: tuple[Model, ...]
    jobs: tuple[TraceJob, ...]  # by arrival
    horizon_s: float

    def model(self, name: str) -> Model:
        return self._by_name[name]

    @property
    def _by_name(self) -> dict[str, Model]:
        return {m.name: m for m in self.models}


def catalog(rng: np.random.Generator, count: int = MODELS) -> tuple[Model, ...]:
    ranks = rng.permutation(count) + 1
    weights = 1.0 / ranks**ZIPF_S
    weights /= weights.sum()
    xl = rng.random(count) < SDXL_SHARE
    loads = np.exp(math.log(LOAD_MEDIAN_S) + LOAD_SIGMA * rng.standard_normal(count))
    return tuple(
        Model(f"m{i:03d}", SDXL_VRAM if xl[i] else SD15_VRAM, float(loads[i]), float(weights[i]))
        for i in range(count)
    )


def generate(seed: int, horizon_s: float, rate: float, models: int = MODELS) -> Trace:
    """`horizon_s` seconds of arrivals at `rate` jobs/s on average outside bursts."""
    rng = np.random.default_rng(seed)
    cat = catalog(rng, models)
    popularity = np.array([m.popularity for m in cat])
    arrivals: list[tuple[float, int]] = []
    t = float(rng.exponential(1 / rate))
    while t < horizon_s:
        arrivals.append((t, int(rng.choice(len(cat), p=popularity))))
        t += float(rng.exponential(1 / rate))
    start = float(rng.exponential(BURST_EVERY_S))
    while start < horizon_s:
        hot = int(rng.choice(len(cat), p=popularity))
        t = start + float(rng.exponential(1 / (rate * (BURST_FACTOR - 1))))
        while t < min(start + BURST_LENGTH_S, horizon_s):
            model = hot if rng.random() < 0.5 else int(rng.choice(len(cat), p=popularity))
            arrivals.append((t, model))
            t += float(rng.exponential(1 / (rate * (BURST_FACTOR - 1))))
        start += BURST_LENGTH_S + float(rng.exponential(BURST_EVERY_S))
    arrivals.sort()
    jobs = []
    for i, (at, m) in enumerate(arrivals):
        base = SDXL_WORK_S if cat[m].vram == SDXL_VRAM else SD15_WORK_S
        images = int(rng.choice(4, p=IMAGES_WEIGHTS)) + 1
        work = base * float(np.exp(WORK_SIGMA * rng.standard_normal())) * images
        jobs.append(TraceJob(i, at, cat[m].name, work))
    return Trace(cat, tuple(jobs), horizon_s)


def load_time(model: Model, rng: np.random.Generator) -> float:
    """One load of `model` onto a GPU."""
    return model.load_s * float(np.exp(LOAD_JITTER_SIGMA * rng.standard_normal()))
