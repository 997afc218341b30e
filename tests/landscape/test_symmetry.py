"""Symmetry audit: standard networks are invariant, W-Asym and sigma-Asym are not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from checkpoints.sources import load_data
from checkpoints.zoo import build
from landscape import symmetry_audit


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("mlp", dict(input_dim=64, width=16, depth=3)),
        ("resnet20", dict(norm="group", in_channels=1)),
    ],
)
def test_audit_separates_standard_from_asymmetric(arch, kw):
    audits = {
        v: symmetry_audit(build(arch, v, seed=0, **kw), trials=1, samples=16)
        for v in ("standard", "w-asym", "sigma-asym")
    }
    std = audits["standard"]
    assert std.is_symmetric and np.all(std.symmetric)
    assert std.all_groups_relative < 1e-5 and std.relative_change.max() < 1e-5
    for v in ("w-asym", "sigma-asym"):
        a = audits[v]
        assert not a.is_symmetric and a.variant == v
        assert a.all_groups_relative > 1e-3, v
        assert a.relative_change.min() > 100 * std.relative_change.max(), (
            v
        )  # every group breaks, by orders of magnitude
        # the group the architecture would have without its asymmetry: the standard architecture's
        assert a.groups == std.groups and a.total_log10_order == pytest.approx(
            std.total_log10_order
        )


def test_audit_on_data_and_group_order():
    model = build("mlp", "standard", input_dim=64, width=16, depth=3)
    data = load_data("digits", "test", samples=50).pair
    audit = symmetry_audit(model, data, trials=1)
    assert audit.samples == 50
    assert audit.total_log10_order == pytest.approx(3 * math.log10(math.factorial(16)))
    frame = audit.to_frame()
    assert list(frame.columns) == [
        "group",
        "size",
        "log10_order",
        "max_change",
        "relative_change",
        "symmetric",
    ]
    assert list(frame["size"]) == [16, 16, 16] and frame["symmetric"].all()
    assert "log10 |G|" in audit._repr_html_()
