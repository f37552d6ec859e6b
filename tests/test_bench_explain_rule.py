"""benchmarks/bench_explain.py's claim-threshold rule: chosen on val by the 95 % Wilson lower bound
of strict claim precision, not its point estimate (no model, hand-made curves)."""

from __future__ import annotations

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_explain.py", "bench_explain")


def test_wilson_lower_bound_matches_the_textbook_values(bench):
    # 81 of 100: p = 0.81, z = 1.96 -> (0.8292 - 0.0793) / 1.0384 = 0.7222 (Wilson 1927; Newcombe 1998)
    assert bench.wilson_lower_bound(81, 100) == pytest.approx(0.7222, abs=5e-4)
    assert bench.wilson_lower_bound(0, 10) == pytest.approx(0.0, abs=1e-12)
    assert bench.wilson_lower_bound(10, 10) == pytest.approx(0.7225, abs=5e-4)  # 10 / (10 + 3.8416)
    assert bench.wilson_lower_bound(5, 0) == 0.0
    # more trials at the same proportion: a tighter bound
    assert bench.wilson_lower_bound(8, 10) < bench.wilson_lower_bound(80, 100) < bench.wilson_lower_bound(800, 1000) < 0.8


def row(threshold, true, claims, unparsed=0):
    return {"threshold": threshold, "true": true, "claims": claims, "unparsed": unparsed,
            "strict_precision": true / (claims + unparsed) if claims + unparsed else None}


def test_the_threshold_needs_the_bound_not_the_point_estimate(bench):
    # 0.5: strict 0.80 on 100 claims (bound 0.71); 0.6: 0.85 on 200 (bound 0.79): 0.6, not 0.5
    curve = [row(0.0, 200, 400), row(0.5, 80, 100), row(0.6, 170, 200), row(0.7, 95, 100)]
    assert bench.choose_claim_threshold(curve) == 0.6
    # unparsed claims count against strict precision: 170 true of 200 + 40 unparsed is 0.71, bound 0.65
    curve = [row(0.0, 200, 400), row(0.6, 170, 200, unparsed=40), row(0.8, 97, 100)]
    assert bench.choose_claim_threshold(curve) == 0.8
    # none reaches: the highest bound, not the highest point estimate (3 of 3 is 1.0, bound 0.44)
    curve = [row(0.0, 100, 200), row(0.6, 140, 200), row(0.9, 3, 3)]
    assert bench.choose_claim_threshold(curve) == 0.6
    # the second curve's 0.6 row: 170 true of 200 claims + 40 unparsed
    assert bench.strict_precision_bound(row(0.6, 170, 200, unparsed=40)) == pytest.approx(0.648, abs=2e-3)
