"""`feedlearn demo` on a shrunken copy of its recipe: the before/after table, the paired differences and the
plot, from the run's own per-problem outcomes."""

from __future__ import annotations

import json

import pytest

from feedlearn.demo import run_demo

SMALL = [
    "train_problems.synthetic.n=16",
    "test_problems.synthetic.n=12",
    "train.batch_size=8",
    "collect.turns=[{n: 1}, {n: 2}]",
    "collect.max_new_tokens=24",
    "evaluate.max_new_tokens=24",
    "evaluate.turns=3",
    "evaluate.parallel_samples=2",
]


def test_demo_reports_each_difference_with_its_paired_standard_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    summary = run_demo(tmp_path / "demo", SMALL)
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved == summary and (tmp_path / "demo" / "turns.png").stat().st_size > 0
    base, rise, paired = summary["base"], summary["rise"], summary["paired"]
    for metric in ("acc@t1", "acc@t3", "m1@t1", "m1@t3", "p1@t3", "m2@t1", "p2@t1"):
        assert paired["difference"][metric]["points"] == pytest.approx(rise[metric] - base[metric], abs=0.02)
        assert paired["difference"][metric]["se"] >= 0
    gains = paired["m1@t3 - m1@t1"]
    assert gains["base"]["points"] == pytest.approx(base["m1@t3"] - base["m1@t1"], abs=0.02)
    assert gains["new"]["points"] == pytest.approx(rise["m1@t3"] - rise["m1@t1"], abs=0.02)
    assert gains["new - base"]["points"] == pytest.approx(
        gains["new"]["points"] - gains["base"]["points"], abs=0.02
    )
    printed = capsys.readouterr().out
    assert "paired s.e." in printed and "points / se" in printed and "m1@t3 - m1@t1: rise - base" in printed
