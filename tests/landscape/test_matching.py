"""Weight matching and activation matching: planted permutations recovered exactly, bad input refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import randomise_norms
from torch import nn

from checkpoints.sources import load_data
from checkpoints.train import TrainSettings, train_model
from checkpoints.zoo import build
from landscape import (
    ParamView,
    UserError,
    activation_matching,
    apply_permutation,
    check_same_family,
    evaluate,
    permutation_spec,
    weight_matching,
)
from landscape.permute import random_perms


def _assert_same_tensors(a: nn.Module, b: nn.Module) -> None:
    sb = b.state_dict()
    for name, t in a.state_dict().items():
        assert torch.equal(t, sb[name]), name


def _inner(a: nn.Module, b: nn.Module, names) -> float:
    """Independent objective: sum of elementwise products of the named tensors, in float64."""
    sa, sb = a.state_dict(), b.state_dict()
    return float(sum((sa[n].double() * sb[n].double()).sum() for n in names))


@pytest.fixture(scope="module")
def trained_mlp():
    train = load_data("digits", "train", samples=300)
    model = build("mlp", seed=3, input_dim=64, width=24, depth=2)
    return train_model(model, train, TrainSettings(epochs=1, batch_size=32), seed=3, progress=False)


def test_planted_permutation_of_trained_mlp_is_recovered_exactly(trained_mlp):
    a = trained_mlp
    spec = permutation_spec(a)
    planted = random_perms(spec, seed=11)
    b = apply_permutation(a, planted)
    assert not torch.equal(a.lins[0].weight, b.lins[0].weight)
    result = weight_matching(a, b)
    for g, p in planted.items():
        np.testing.assert_array_equal(
            result.perms[g], np.argsort(p)
        )  # B[i] = A[p[i]], so pi = p^-1
    _assert_same_tensors(a, apply_permutation(b, result))
    assert result.function_preserved and result.max_output_change < 1e-5
    assert result.converged and np.all(np.diff(result.history) >= -1e-9)
    names = list(spec.moves())
    assert result.objective == pytest.approx(
        _inner(a, a, names), rel=1e-5
    )  # aligned B equals A: J = |A|^2
    assert result.objective_identity == pytest.approx(_inner(a, b, names), rel=1e-5)


@pytest.mark.parametrize("norm", ["group", "batch", "layer"])
def test_planted_permutation_of_resnet20_is_recovered_exactly(norm):
    a = randomise_norms(build("resnet20", "standard", seed=0, norm=norm, width=1))
    planted = random_perms(permutation_spec(a), seed=5)
    b = apply_permutation(a, planted)
    result = weight_matching(a, b)
    _assert_same_tensors(a, apply_permutation(b, result))
    assert result.function_preserved


def test_matching_two_seeds_improves_objective_and_keeps_function():
    a, b = (
        build("mlp", seed=0, input_dim=30, width=16, depth=3),
        build("mlp", seed=1, input_dim=30, width=16, depth=3),
    )
    randomise_norms(a, 1), randomise_norms(b, 2)
    result = weight_matching(a, b, restarts=2, seed=4)
    aligned = apply_permutation(b, result)
    names = list(result.spec.moves())
    assert result.objective == pytest.approx(_inner(a, aligned, names), rel=1e-5)
    assert result.objective > result.objective_identity
    assert len(result.restart_objectives) == 3 and result.objective == pytest.approx(
        result.restart_objectives.max()
    )
    x = torch.randn(16, 30)
    with torch.no_grad():
        assert torch.allclose(aligned(x), b(x), atol=1e-5)
    frame = result.to_frame()
    assert list(frame["group"]) == ["hidden0", "hidden1", "hidden2"] and frame["moved"].sum() > 0


def test_activation_matching_recovers_planted_permutation(trained_mlp):
    a = trained_mlp
    planted = random_perms(permutation_spec(a), seed=2)
    b = apply_permutation(a, planted)
    data = load_data("digits", "test", samples=200).pair
    result = activation_matching(a, b, data)
    assert result.method == "activation"
    _assert_same_tensors(a, apply_permutation(b, result))


def test_weight_matching_on_w_asym_warns_and_keeps_the_family():
    a, b = (
        build("mlp", "w-asym", seed=0, input_dim=20, width=12, depth=2),
        build("mlp", "w-asym", seed=1, input_dim=20, width=12, depth=2),
    )
    with pytest.warns(UserWarning, match="asymmetric"):
        result = weight_matching(a, b)
    assert not result.function_preserved and result.max_output_change > 1e-3
    aligned = apply_permutation(b, result)
    check_same_family(
        a, aligned
    )  # masks and fixed values stay: the aligned model can be interpolated with A


def test_bad_inputs_are_refused():
    a = build("mlp", input_dim=20, width=12, depth=2)
    with pytest.raises(UserError, match="different shapes"):
        weight_matching(a, build("mlp", input_dim=20, width=16, depth=2))
    with pytest.raises(UserError, match="different architectures"):
        weight_matching(a, build("mlp", input_dim=20, width=12, depth=3))
    with pytest.raises(UserError, match="fixed buffer"):
        weight_matching(
            build("mlp", "w-asym", input_dim=20, width=12, depth=2, mask_seed=0),
            build("mlp", "w-asym", input_dim=20, width=12, depth=2, mask_seed=1),
        )
    with pytest.raises(UserError, match="not a multiple"):
        weight_matching(
            a,
            copy.deepcopy(a),
            spec={
                "groups": {"g": [["lins.0.weight", 0], ["lins.0.weight", 1]]},
                "sizes": {"g": 12},
            },
        )
    with pytest.raises(UserError, match="max_iter"):
        weight_matching(a, copy.deepcopy(a), max_iter=0)


def _midpoint_barrier(a: nn.Module, b: nn.Module, data) -> tuple[float, float, float]:
    mid = copy.deepcopy(a)
    ParamView(mid).set_((ParamView(a).get() + ParamView(b).get()) / 2)
    la, lb, lm = evaluate(a, data).loss, evaluate(b, data).loss, evaluate(mid, data).loss
    return lm - (la + lb) / 2, la, lb


def test_aligned_barrier_of_standard_pair_is_lower(tiny_runs, capsys):
    from checkpoints import load_model

    a = load_model(tiny_runs / "standard" / "seed0" / "final.pt")
    b = load_model(tiny_runs / "standard" / "seed1" / "final.pt")
    data = load_data("digits", "test").pair
    plain, la, lb = _midpoint_barrier(a, b, data)
    aligned, la2, lb2 = _midpoint_barrier(a, apply_permutation(b, weight_matching(a, b)), data)
    assert (la2, lb2) == pytest.approx((la, lb), abs=1e-6)  # alignment keeps B's loss
    with capsys.disabled():
        print(
            f"\n  midpoint test-loss barrier, standard MLP pair on digits: unaligned {plain:.4f}, weight-matched {aligned:.4f}"
        )
    assert aligned < plain
