"""Permutation specs: declared and derived specs are symmetries, JSON round trip, wrong specs are named."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_norms
from torch import nn

from checkpoints.zoo import build
from landscape import PermutationSpec, UserError, apply_permutation, permutation_spec, validate_spec
from landscape.permute import random_perms
from landscape.sample_inputs import sample_input
from landscape.spec_tracing import derive_spec

ZOO = [
    ("mlp", dict(input_dim=20, width=12, depth=2)),
    ("mlp", dict(input_dim=20, width=12, depth=2, norm="batch")),
    ("cnn", dict(channels=(6, 8))),
    ("resnet20", dict(norm="group")),
    ("resnet20", dict(norm="batch")),
    ("resnet20", dict(norm="layer")),
]


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _groups(spec: PermutationSpec) -> list[list]:
    return sorted(sorted(e) for e in spec.groups.values())


@pytest.mark.parametrize("arch,kw", ZOO)
@pytest.mark.parametrize("variant", ["standard", "w-asym", "sigma-asym"])
def test_zoo_specs_are_symmetries_of_the_standard_architecture(arch, kw, variant):
    model = randomise_norms(build(arch, variant, seed=1, **kw))
    spec = permutation_spec(model)  # validated inside (fixed buffers moved too)
    x = sample_input(model, 6, seed=3)
    perm = random_perms(spec, seed=7)
    ref = _out(model, x)
    tol = 1e-5 * max(1.0, float(ref.abs().max()))  # float32 rounding grows with the output's size
    full = apply_permutation(model, perm, permute_fixed=True)
    assert (_out(full, x) - ref).abs().max() < tol
    kept = apply_permutation(model, perm)  # default: the architecture's fixed buffers stay
    change = float((_out(kept, x) - ref).abs().max())
    if variant == "standard":
        assert change < tol
        params = dict(kept.named_parameters())
        assert all(
            not torch.equal(p, params[n]) for n, p in model.named_parameters() if p.dim() >= 2
        )  # every weight really moved
    else:
        assert change > 1e-3 * max(1.0, float(ref.abs().max()))
        for n, b in model.named_buffers():
            if n.endswith(("mask", "fixed", ".C")):
                assert torch.equal(b, dict(kept.named_buffers())[n])


def test_resnet_spec_shares_one_permutation_per_residual_stream():
    model = build("resnet20", "standard", norm="batch")
    spec = model.permutation_spec()
    stage2 = dict(spec.groups["stage2"])
    for block in range(3):  # every block adding into stage 2 is indexed by the same group
        assert stage2[f"layer2.{block}.conv2.weight"] == 0
        assert stage2[f"layer2.{block}.bn2.running_mean"] == 0
    assert ("layer2.0.shortcut.0.weight", 0) in spec.groups["stage2"] and (
        "layer2.0.shortcut.0.weight",
        1,
    ) in spec.groups["stage1"]
    assert ("linear.weight", 1) in spec.groups["stage3"]
    assert len(spec.groups) == 3 + 9  # three streams, nine block interiors
    # one stream and three block interiors per stage, of 16, 32 and 64 channels
    expected = sum(4 * math.log10(math.factorial(n)) for n in (16, 32, 64))
    assert spec.log10_order() == pytest.approx(expected)


def test_derived_spec_equals_declared_spec_on_zoo_models():
    for arch, kw in [
        ("mlp", dict(input_dim=20, width=12, depth=3)),
        ("resnet20", dict(norm="layer")),
        ("cnn", {}),
    ]:
        for variant in (
            ("standard", "w-asym", "sigma-asym") if arch == "mlp" else ("standard", "w-asym")
        ):
            model = build(arch, variant, **kw)  # FiGLU is followed as F.linear with its matrix
            derived = derive_spec(model, sample_input(model))
            assert _groups(derived) == _groups(model.permutation_spec()), (
                arch,
                variant,
                derived.notes,
            )


def test_automatic_spec_sequential_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(20, 16),
        nn.ReLU(),
        nn.Linear(16, 12),
        nn.LayerNorm(12),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(12, 5),
    )
    spec = permutation_spec(model)
    assert spec.source == "derived"
    assert _groups(spec) == sorted(
        [
            sorted([("1.weight", 0), ("1.bias", 0), ("3.weight", 1)]),
            sorted(
                [("3.weight", 0), ("3.bias", 0), ("4.weight", 0), ("4.bias", 0), ("7.weight", 1)]
            ),
        ]
    )
    assert spec.sizes == {"1": 16, "3": 12}
    x = torch.randn(9, 20)
    permuted = apply_permutation(model, random_perms(spec, 1))
    assert torch.allclose(_out(permuted, x), _out(model, x), atol=1e-6)
    assert not torch.equal(permuted[1].weight, model[1].weight)


def test_automatic_spec_sequential_cnn_with_flatten_into_linear():
    torch.manual_seed(0)
    model = randomise_norms(
        nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 5, 3, padding=1),
            nn.GroupNorm(1, 5),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(5 * 4 * 4, 3),
        )
    )
    x = torch.randn(4, 2, 8, 8)
    spec = permutation_spec(model, x)
    assert spec.sizes == {"0": 6, "4": 5}
    assert ("8.weight", 1) in spec.groups["4"]  # the flattened 5 x 4 x 4 axis moves in blocks of 16
    assert {("1.running_mean", 0), ("1.running_var", 0)} <= set(spec.groups["0"])
    permuted = apply_permutation(model, random_perms(spec, 2), spec=spec)
    assert torch.allclose(_out(permuted, x), _out(model, x), atol=1e-6)


class _ListNet(nn.Module):
    def __init__(self, check: bool):
        super().__init__()
        self.lins = nn.ModuleList([nn.Linear(10, 8), nn.Linear(8, 8), nn.Linear(8, 3)])
        self.acts = nn.ModuleList([nn.Tanh(), nn.Tanh()])
        self.check = check

    def forward(self, x):
        if self.check and not isinstance(x, torch.Tensor):  # fx's proxies fail this check
            raise TypeError("expected a tensor")
        for i, act in enumerate(self.acts):
            if x.shape[0] > 0:  # shape-dependent control flow: traced on the sample's shapes
                x = act(self.lins[i](x))
        return self.lins[-1](x)


@pytest.mark.parametrize("check", [False, True])
def test_modulelist_pattern_traces_or_falls_back_to_module_order(check):
    model = _ListNet(check)
    spec = permutation_spec(model)
    assert ("module order" in spec.notes[0]) == check, spec.notes
    assert spec.sizes == {"lins.0": 8, "lins.1": 8}
    assert ("lins.2.weight", 1) in spec.groups["lins.1"]


def test_json_round_trip(tmp_path):
    model = build("resnet20", "w-asym", norm="batch")
    spec = permutation_spec(model)
    path = tmp_path / "spec.json"
    spec.to_json(path)
    back = PermutationSpec.from_json(path)
    assert back.groups == spec.groups and back.sizes == spec.sizes
    assert PermutationSpec.from_json(spec.to_json()).to_dict() == spec.to_dict()
    validate_spec(model, str(path))  # a path works wherever a spec is accepted
    no_sizes = {"groups": {g: [list(e) for e in es] for g, es in spec.groups.items()}}
    assert PermutationSpec.from_dict(no_sizes).resolve(model).sizes == spec.sizes


def _mlp_spec(model):
    return {g: list(e) for g, e in model.permutation_spec().groups.items()}


def test_spec_missing_a_bias_names_it():
    model = build("mlp", input_dim=20, width=12, depth=2)
    groups = _mlp_spec(model)
    groups["hidden0"].remove(("lins.0.bias", 0))
    with pytest.raises(UserError, match=r"lins\.0\.bias"):
        validate_spec(model, {"groups": groups})


def test_spec_missing_a_consumer_names_the_tensor():
    model = build("mlp", input_dim=20, width=12, depth=2)
    groups = _mlp_spec(model)
    groups["hidden1"].remove(("lins.2.weight", 1))
    with pytest.raises(UserError, match=r"does not cover tensor lins\.2\.weight axis 1"):
        validate_spec(model, {"groups": groups})


def test_spec_with_a_tensor_that_does_not_belong_names_it():
    model = build("mlp", input_dim=20, width=12, depth=2, norm="none")
    groups = _mlp_spec(model)
    groups["hidden0"].append(
        ("lins.1.weight", 0)
    )  # lins.1's outputs are hidden1's units, not hidden0's
    groups["hidden0"].append(("lins.1.bias", 0))
    groups["hidden1"] = [
        e for e in groups["hidden1"] if e not in (("lins.1.weight", 0), ("lins.1.bias", 0))
    ]
    with pytest.raises(UserError, match=r"lins\.1\.(weight|bias)"):
        validate_spec(model, {"groups": groups})


def test_spec_errors_for_unknown_tensors_and_non_square_groups():
    model = build("mlp", input_dim=20, width=12, depth=2)
    with pytest.raises(UserError, match="no parameter or buffer 'lins.9.weight'"):
        validate_spec(model, {"groups": {"g": [["lins.9.weight", 0]]}})
    with pytest.raises(UserError, match=r"lins\.0\.weight axis 1 has size 20.*not a multiple"):
        validate_spec(
            model,
            {"groups": {"g": [["lins.0.weight", 1], ["lins.1.weight", 1]]}, "sizes": {"g": 12}},
        )
    with pytest.raises(UserError, match="two groups"):
        PermutationSpec({"a": [("x", 0)], "b": [("x", 0)]}, {"a": 2, "b": 2})


def test_apply_permutation_rejects_non_permutations():
    model = build("mlp", input_dim=20, width=12, depth=2)
    with pytest.raises(UserError, match="not a permutation"):
        apply_permutation(model, {"hidden0": np.zeros(12, dtype=int)})
    with pytest.raises(UserError, match="does not have"):
        apply_permutation(model, {"nope": np.arange(12)})


# ----------------------------------------------------------------------------- module layering
#: the permutation modules, each importing only those before it (never one after it)
LAYERS = [
    "permutation",
    "spec_builder",
    "permute",
    "sample_inputs",
    "spec_labels",
    "spec_rules",
    "fx_trace",
    "module_order",
    "spec_tracing",
    "spec_resolution",
    "matching",
    "symmetry",
]
PACKAGE = Path(__file__).resolve().parents[2] / "landscape"


def _landscape_imports(module: str) -> set[str]:
    """The landscape modules ``module`` imports anywhere in its file (function bodies too)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("landscape."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("landscape."))
    return out


def test_permutation_modules_import_only_the_layers_below_them():
    assert "spec_resolution" not in _landscape_imports("spec_tracing")
    for i, module in enumerate(LAYERS):
        upward = _landscape_imports(module) & set(LAYERS[i:])
        assert not upward, f"{module} imports {upward}, which sit above it (or is itself)"


def test_each_permutation_module_imports_alone_in_dependency_order():
    code = (
        "import importlib, sys\n"
        f"layers = {LAYERS!r}\n"
        "for i, m in enumerate(layers):\n"
        "    importlib.import_module('landscape.' + m)\n"
        "    above = [a for a in layers[i + 1 :] if 'landscape.' + a in sys.modules]\n"
        "    assert not above, (m, above)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_public_names_resolve_through_the_export_table():
    import landscape
    from landscape import matching, permutation, spec_resolution

    assert landscape.PermutationSpec is permutation.PermutationSpec
    assert (
        landscape.permutation_spec is spec_resolution.permutation_spec
    )  # a function, not a module
    assert landscape.apply_permutation is spec_resolution.apply_permutation
    assert landscape.validate_spec is spec_resolution.validate_spec
    assert landscape.weight_matching is matching.weight_matching
