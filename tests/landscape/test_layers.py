"""Per-layer curvature against the dense Hessian: each layer's block has the eigenvalues and
trace of the dense block, and the blocks' traces add up to the full trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape import UserError
from landscape.layers import layer_parameters, per_layer_curvature


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 7), nn.LayerNorm(7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    return model, (x, y)


def dense_hessian(model, data):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(t):
        parts = torch.split(t, sizes)
        params = {n: v.reshape(s) for n, v, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, params, (data[0],)), data[1])

    H = torch.autograd.functional.hessian(loss, theta).numpy()
    offsets = dict(zip(names, np.cumsum([0, *sizes[:-1]])))
    return H, {n: np.arange(offsets[n], offsets[n] + s) for n, s in zip(names, sizes)}


def test_blocks_match_the_dense_hessian_and_traces_add_up():
    model, data = problem()
    H, index = dense_hessian(model, data)
    res = per_layer_curvature(model, data, top_k=2, num_queries=30, tol=1e-8)
    layers = layer_parameters(model)
    assert res.layers == tuple(layers) == ("0", "1", "3", "5")
    for i, params in enumerate(layers.values()):
        idx = np.concatenate([index[p] for p in params])
        block = H[np.ix_(idx, idx)]
        top = np.sort(np.linalg.eigvalsh(block))[::-1][:2]
        assert res.coordinates[i] == len(idx)
        np.testing.assert_allclose(res.eigenvalues[i], top, rtol=1e-6, atol=1e-9)
        if res.exact_trace[i]:
            assert res.trace[i] == pytest.approx(np.trace(block), rel=1e-9, abs=1e-12)
        else:  # an estimate: within 4 standard errors of the block's trace
            assert abs(res.trace[i] - np.trace(block)) <= 4 * res.trace_stderr[i] + 1e-9
    assert not res.exact_trace.all() and res.exact_trace.any()
    assert abs(res.total_trace - np.trace(H)) <= 4 * res.total_stderr + 1e-9
    frame = res.to_frame()
    assert list(frame["layer"]) == list(layers) and len(frame) == 4


def test_layers_by_depth_and_bad_grouping():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3)), nn.Linear(3, 1))
    assert layer_parameters(model, 1) == {
        "0": ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"],
        "1": ["1.weight", "1.bias"],
    }
    with pytest.raises(UserError, match="depth"):
        layer_parameters(model, 0)
