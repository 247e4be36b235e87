"""The placement benchmark's verdict (bench/placement): the honesty gate and gpufleet >= FGD."""

from __future__ import annotations

from bench.placement.__main__ import PAPER_DEFAULT, TRACES, Run, report

DEFAULT, SHARED = TRACES


def runs(trace: str, alloc: dict[str, list[float]]) -> list[Run]:
    return [
        Run(trace, 42 + i, policy, value, value, (0.0, 0.0, 0.0, 0.0), 100, 0.01)
        for policy, values in alloc.items()
        for i, value in enumerate(values)
    ]


def paper_like(gpufleet: list[float], fgd: list[float]) -> dict[str, list[float]]:
    return {
        "Random-fit": [PAPER_DEFAULT["Random-fit"]] * len(fgd),
        "Best-fit": [PAPER_DEFAULT["Best-fit"] + 0.1] * len(fgd),
        "FGD": fgd,
        "gpufleet": gpufleet,
    }


def test_it_passes_when_the_gate_holds_and_gpufleet_is_at_least_fgd_on_every_trace(capsys):
    alloc = paper_like(gpufleet=[95.4, 95.1], fgd=[95.2, 95.2])
    assert report(runs(DEFAULT, alloc) + runs(SHARED, alloc), [42, 43])
    out = capsys.readouterr().out
    assert "honesty gate: Best-fit within 0.5 of the paper: holds (0.10)" in out
    # The mean gap, and seed by seed: one seed above, one below.
    assert "gpufleet - FGD at 100% arrived: +0.05 points (per seed -0.10 to +0.20; above on 1 of 2)" in out


def test_it_fails_when_gpufleet_is_below_fgd_on_one_trace(capsys):
    ahead = paper_like(gpufleet=[95.4, 95.4], fgd=[95.2, 95.2])
    behind = paper_like(gpufleet=[94.0, 94.0], fgd=[94.1, 94.0])
    assert not report(runs(DEFAULT, ahead) + runs(SHARED, behind), [42, 43])
    assert "gpufleet - FGD at 100% arrived: -0.05 points" in capsys.readouterr().out


def test_it_fails_when_a_baseline_is_off_the_paper_however_well_gpufleet_does(capsys):
    alloc = paper_like(gpufleet=[99.0], fgd=[95.2])
    alloc["Random-fit"] = [PAPER_DEFAULT["Random-fit"] - 0.6]
    assert not report(runs(DEFAULT, alloc), [42])
    assert "honesty gate: Random-fit within 0.5 of the paper: FAILS (0.60)" in capsys.readouterr().out
