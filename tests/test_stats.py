"""The loop's statistics collector (per-step means, all-reduced; per-tick num/mean/std)."""
from __future__ import annotations

import pytest
import torch

from ganstack.training.stats import StatCollector


def test_masked_reports_equal_reports_of_the_selection():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    mask = torch.tensor([True, False, True, False, True])
    a, b = StatCollector("cpu"), StatCollector("cpu")
    a.report("x", v, mask=mask)
    a.report("none", v, mask=torch.zeros(5, dtype=torch.bool))  # nothing selected: no statistic at all
    b.report("x", v[mask])
    assert a.end_step() == b.end_step() == {"x": 3.0}
    assert a.end_tick() == b.end_tick()
    with pytest.raises(ValueError, match="mask has 2 elements"):
        a.report("x", v, mask=torch.ones(2, dtype=torch.bool))
