"""Objectives and batches: the lm loss against a hand computation with padding, exact token
means over batches of different padding, dict batches equal to the tuple path, the default
objective equal to the kernel as it was, bad losses and batches refused in one line."""

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checkpoints import zoo
from landscape import (
    Batch,
    BatchSpec,
    Objective,
    UserError,
    as_batches,
    evaluate,
    interpolate,
    random_directions,
    reset_batchnorm,
    resolve_objective,
    surface,
)
from landscape.evaluation import batch_outputs, loss_sum, sample_losses
from landscape.hessian import HessianOperator

V, T = 11, 6


class TinyLM(nn.Module):
    """Token ids (N, T) -> logits (N, T, V); padded embeddings are zeroed by the attention mask
    (by default: the ids that are not the pad id 0)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(V, 8)
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, V)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = input_ids != 0
        h = self.emb(input_ids) * attention_mask[..., None].to(torch.float32)
        h = torch.tanh(self.mix(h)) + h.cumsum(dim=1) / (1 + torch.arange(h.shape[1]))[:, None]
        return self.out(h)


def padded_tokens(n: int = 9, seed: int = 0):
    """Token ids, next-token labels (-100 at padding) and attention masks of sequences of
    different lengths (padding at the end, with pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, T), generator=g)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.full((n, T), -100)
    labels[:, :-1] = torch.where(mask[:, 1:] == 1, ids[:, 1:], -100)
    return ids, labels, mask


def hand_lm(model, ids, labels, mask):
    """Mean token cross-entropy and top-1 accuracy by explicit loops over the counted tokens."""
    with torch.no_grad():
        z = model(ids, attention_mask=mask).double()
    total, hits, count = 0.0, 0, 0
    for n in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if labels[n, t] == -100 or mask[n, t] == 0:
                continue
            row = z[n, t]
            total += float(torch.logsumexp(row, 0) - row[labels[n, t]])
            hits += int(int(row.argmax()) == int(labels[n, t]))
            count += 1
    return total / count, hits / count, count


def dict_batches(ids, labels, mask, sizes):
    out, i = [], 0
    for s in sizes:
        out.append(
            {
                "input_ids": ids[i : i + s],
                "attention_mask": mask[i : i + s],
                "labels": labels[i : i + s],
            }
        )
        i += s
    return out


def test_lm_loss_equals_a_hand_computation_with_padding():
    model = TinyLM()
    ids, labels, mask = padded_tokens()
    # padding also marked only by the mask (label kept) must not count either
    labels_unmasked = labels.clone()
    labels_unmasked[mask == 0] = 3
    want, acc, count = hand_lm(model, ids, labels, mask)
    assert 0 < count < labels.numel()  # there is padding to mask
    for lab in (labels, labels_unmasked):
        ev = evaluate(model, dict_batches(ids, lab, mask, [4, 5]), objective="lm")
        assert ev.num_units == count and ev.num_samples == ids.shape[0]
        assert ev.loss == pytest.approx(want, rel=1e-6)
        assert ev.accuracy == pytest.approx(acc, abs=1e-12)


def test_token_mean_is_exact_over_batches_with_different_padding():
    model = TinyLM(1)
    ids, labels, mask = padded_tokens(12, seed=3)
    full = evaluate(model, dict_batches(ids, labels, mask, [12]), objective="lm")
    sizes = [1, 5, 2, 4]
    parts = evaluate(model, dict_batches(ids, labels, mask, sizes), objective="lm")
    assert parts.num_units == full.num_units
    assert parts.loss == pytest.approx(full.loss, rel=1e-6)  # float32 outputs of other batch shapes
    assert parts.accuracy == pytest.approx(full.accuracy, abs=1e-12)
    # a mean of batch means would differ: the batches hold different numbers of tokens
    means = [
        evaluate(model, [b], objective="lm").loss for b in dict_batches(ids, labels, mask, sizes)
    ]
    assert abs(sum(means) / len(means) - full.loss) > 1e-3
    want, _, _ = hand_lm(model, ids, labels, mask)
    assert full.loss == pytest.approx(want, rel=1e-6)


def test_lm_from_tuple_batches_with_the_ignore_index_and_a_batch_spec():
    model = TinyLM(2)
    ids, labels, mask = padded_tokens(7, seed=5)
    want, acc, count = hand_lm(model, ids, labels, mask)
    # (ids, labels) tuples: -100 marks the padding; the model is called on the ids alone
    ev = evaluate(model, (ids, labels), objective="lm")
    assert ev.num_units == count and ev.loss == pytest.approx(want, rel=1e-6)
    assert ev.accuracy == pytest.approx(acc, abs=1e-12)
    # a tuple (ids, mask, labels) read through a spec of positions: the mask alone marks padding
    spec = BatchSpec(inputs=0, targets=2, mask=1)
    unmarked = torch.where(labels == -100, 1, labels)
    b = as_batches([(ids, mask, unmarked)], spec=spec)
    assert torch.equal(b.batches[0].mask, mask) and torch.equal(b.batches[0].targets, unmarked)
    ev2 = evaluate(model, b, objective="lm")
    # the last position of full-length rows has no next token: counted here, masked before
    extra = int(((labels == -100) & (mask == 1)).sum())
    assert ev2.num_units == count + extra


def mlp():
    return zoo.build("mlp", "standard", input_dim=12, num_classes=4, width=8, depth=2, seed=0)


def xy(n=50, seed=0, float_targets=False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 12, generator=g)
    y = torch.randn(n, 4, generator=g) if float_targets else torch.randint(0, 4, (n,), generator=g)
    return X, y


class Keyword(nn.Module):
    """A model called with keyword inputs: forward(pixels, scale)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixels, scale):
        return self.net(pixels * scale)


def test_dict_batches_through_evaluate_interpolate_and_surface_equal_the_tuple_path():
    a, b = (
        mlp(),
        zoo.build("mlp", "standard", input_dim=12, num_classes=4, width=8, depth=2, seed=1),
    )
    X, y = xy()
    pairs = [(X[i : i + 20], y[i : i + 20]) for i in range(0, 50, 20)]
    dicts = [{"x": x_, "labels": y_} for x_, y_ in pairs]
    renamed = [{"pixels": x_, "target": y_} for x_, y_ in pairs]
    spec = BatchSpec(inputs="pixels", targets="target")
    ref = evaluate(a, pairs)
    assert evaluate(a, dicts) == ref
    assert evaluate(a, as_batches(renamed, spec=spec)) == ref
    assert evaluate(a, {"x": X, "labels": y}) == evaluate(a, (X, y))  # whole data by columns
    # several input keys: model(**inputs)
    kw = [{"pixels": x_, "scale": torch.ones(len(x_), 1), "labels": y_} for x_, y_ in pairs]
    assert evaluate(Keyword(a), kw) == ref
    c1 = interpolate(a, b, pairs, num_points=5)
    c2 = interpolate(a, b, dicts, num_points=5)
    c3 = interpolate(Keyword(a), Keyword(b), kw, num_points=5)
    for c in (c2, c3):
        assert (c.loss == c1.loss).all() and (c.accuracy == c1.accuracy).all()
    d = random_directions(a, seed=3)
    s1 = surface(a, pairs, d, steps=3, span=0.5, progress=False)
    s2 = surface(a, dicts, d, steps=3, span=0.5, progress=False)  # one input key: model(x)
    assert (s1.loss == s2.loss).all() and (s1.accuracy == s2.accuracy).all()
    assert s2.settings["shortcut_note"].startswith("first layer")
    plain = surface(a, pairs, d, steps=3, span=0.5, progress=False, shortcut=False)
    dk = random_directions(Keyword(a), seed=3)  # the same draws under other parameter names
    assert torch.equal(dk.vectors, d.vectors)
    s3 = surface(Keyword(a), kw, dk, steps=3, span=0.5, progress=False)  # model(**inputs)
    assert (s3.loss == plain.loss).all() and (s3.accuracy == plain.accuracy).all()
    assert "off: the inputs are a dict" in s3.settings["shortcut_note"]


def test_auto_gives_the_kernel_numbers_bit_for_bit():
    """The default objective against the evaluation loop as it was written before objectives:
    per batch ``cross_entropy(reduction="none").sum().double()`` (or the squared error), summed,
    divided by N; top-1 hits for labels."""
    model = mlp()
    for float_targets in (False, True):
        X, y = xy(70, seed=4, float_targets=float_targets)
        batches = as_batches((X, y), batch_size=16)
        total, correct, n = None, None, 0
        model.eval()
        with torch.no_grad():
            for x_, y_ in batches:
                out = model(x_)
                if float_targets:
                    d = out.reshape(len(out), -1) - y_.reshape(len(y_), -1)
                    s = (d * d).sum(dim=1).sum().double()
                else:
                    s = F.cross_entropy(out, y_, reduction="none").sum().double()
                    c = (out.argmax(dim=1) == y_).sum()
                    correct = c if correct is None else correct + c
                total = s if total is None else total + s
                n += len(y_)
        loss = float(total) / n
        for objective in (None, "auto", resolve_objective("auto")):
            ev = evaluate(model, batches, objective=objective)
            assert ev.loss == loss and ev.num_units == n
            if float_targets:
                assert math.isnan(ev.accuracy)
            else:
                assert ev.accuracy == int(correct) / n
        named = evaluate(
            model, batches, objective="squared_error" if float_targets else "classification"
        )
        assert named.loss == loss
        # the thin wrappers other modules import
        x0, y0 = batches.batches[0]
        assert torch.equal(
            sample_losses(model(x0), y0), resolve_objective().loss(model(x0), Batch(x0, y0))
        )
        assert loss_sum(model(x0), y0) == sample_losses(model(x0), y0).sum()


def test_hessian_of_the_token_mean_equals_the_dense_hessian():
    model = TinyLM(4)
    ids, labels, mask = padded_tokens(6, seed=8)
    data = dict_batches(ids, labels, mask, [2, 4])
    op = HessianOperator(model, data, objective="lm")
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(0))
    # dense: the Hessian of the exact token mean, by autograd over one big batch
    from landscape.params import ParamView

    view = ParamView(model)
    theta = view.get()

    def mean_loss(t):
        out = torch.func.functional_call(
            model, view.functional(t), (ids,), {"attention_mask": mask}
        )
        keep = (labels != -100) & (mask != 0)
        return F.cross_entropy(out[keep], labels[keep])

    H = torch.autograd.functional.hessian(mean_loss, theta)
    assert torch.allclose(op @ v, H @ v, rtol=1e-4, atol=1e-5)
    assert op.loss == pytest.approx(float(mean_loss(theta)), rel=1e-6)
    assert op.num_units == int(((labels != -100) & (mask != 0)).sum())
    fwd = HessianOperator(model, data, objective="lm", hvp="forward-over-reverse")
    assert torch.allclose(fwd @ v, H @ v, rtol=1e-4, atol=1e-5)
    g = torch.autograd.grad(mean_loss(theta.requires_grad_()), theta)[0]
    assert torch.allclose(op.gradient(), g, rtol=1e-5, atol=1e-6)


def test_batchnorm_reset_reads_inputs_only():
    model = zoo.build("cnn", "standard", in_channels=1, num_classes=4, channels=(4, 6), seed=0)
    X = torch.randn(30, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model)
    reset_batchnorm(model, [X[:30]])  # plain tensors: no targets needed
    reset_batchnorm(twin, [{"x": X}])
    for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(a, b), n


def test_objective_pickles_by_name_and_user_objectives_by_reference():
    for name in ("auto", "classification", "squared_error", "lm"):
        assert pickle.loads(pickle.dumps(resolve_objective(name))) is resolve_objective(name)
    b = pickle.loads(pickle.dumps(Batch(torch.ones(2, 3), torch.zeros(2), torch.ones(2))))
    assert torch.equal(b.mask, torch.ones(2)) and b.inputs.shape == (2, 3)


def wrong_shape(outputs, batch):
    return F.cross_entropy(outputs, batch.targets, reduction="none")[:, None]


def not_finite(outputs, batch):
    return torch.full((outputs.shape[0],), float("nan"))


@pytest.mark.parametrize(
    "objective, data, message",
    [
        ("hinge", None, "unknown loss"),
        ("no_such_module_xyz:loss", None, "cannot import no_such_module_xyz"),
        ("math:no_such_fn", None, "has no callable no_such_fn"),
        (wrong_shape, None, "must return one value per sample, shape (50,)"),
        (not_finite, None, "NaN or Inf"),
        ("lm", None, "needs logits (N, T, V)"),
        ("classification", "float", "needs integer class labels"),
        ("auto", "no-targets", "needs targets"),
        (
            Objective("c", lambda o, b: o.sum(1), lambda o, b: o[:, :1]),
            None,
            "correct() gave (50, 1)",
        ),
    ],
)
def test_bad_losses_are_one_line_errors(objective, data, message):
    X, y = xy()
    d = {"float": (X, y.float()), "no-targets": [X]}.get(data, (X, y))
    with pytest.raises(UserError) as e:
        evaluate(mlp(), d, objective=objective)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "data, spec, message",
    [
        (
            [{"input_ids": torch.ones(2, 3)}],
            BatchSpec(inputs="input_ids", targets="labels"),
            "no key 'labels'",
        ),
        (
            [{"x": torch.ones(2, 3), "labels": torch.ones(2)}],
            BatchSpec(mask="attention_mask"),
            "no key 'attention_mask'",
        ),
        ([(torch.ones(2, 3), torch.ones(3))], None, "inputs have 2 samples but targets 3"),
        ([(torch.ones(2, 3), [1, 2])], None, "targets are a list, not a tensor"),
        ([(torch.ones(2, 3), torch.ones(2))], BatchSpec(targets="labels"), "by key 'labels'"),
        ([torch.ones(2, 3)], BatchSpec(targets=1), "no targets or mask"),
        ((torch.ones(4, 3), torch.ones(5)), None, "inputs have 4 samples but targets 5"),
    ],
)
def test_bad_batches_are_one_line_errors(data, spec, message):
    with pytest.raises(UserError) as e:
        as_batches(data, spec=spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_activation_matching_refuses_dict_inputs_in_one_line():
    from landscape import activation_matching

    X, y = xy()
    kw = [{"pixels": X, "scale": torch.ones(len(X), 1), "labels": y}]
    with pytest.raises(UserError, match="one input tensor per batch"):
        activation_matching(Keyword(mlp()), Keyword(mlp()), kw)


def test_batch_outputs_keeps_yielding_outputs_and_targets():
    model = mlp()
    X, y = xy()
    got = list(batch_outputs(model, (X, y)))
    assert len(got) == 1 and torch.equal(got[0][1], y) and got[0][0].shape == (50, 4)


# ----------------------------------------------------------------------------- the command line
CE_MODULE = '''
import torch.nn.functional as F


def ce(outputs, batch):
    """Cross-entropy per sample: the classification loss in disguise."""
    return F.cross_entropy(outputs, batch.targets, reduction="none")
'''


def test_a_user_loss_runs_through_interpolate_hessian_surface_and_run(
    tiny_runs, tmp_path, monkeypatch
):
    """``--loss module:callable`` on every verb that measures a loss; a user loss that is the
    classification loss in disguise gives the built-in's numbers."""
    import numpy as np

    from analysis.cli import main
    from landscape.store import ResultsStore

    (tmp_path / "user_losses_ce.py").write_text(CE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--data", "digits", "--samples", "60", "--device", "cpu", "-q"]
    stores = {}
    for loss in ("classification", "user_losses_ce:ce"):
        out = tmp_path / f"{loss.replace(':', '-')}.h5"
        for verb, extra in (
            ("interpolate", ["--num-points", "3", "--no-mli", "--splits", "test"]),
            ("hessian", ["--top-k", "2", "--num-queries", "4"]),
            ("surface", ["--steps", "3", "--span", "0.5", "--dims", "1"]),
        ):
            argv = [verb, str(tiny_runs), *common, *extra, "--loss", loss, "-o", str(out)]
            assert main(argv) == 0, verb
        stores[loss] = ResultsStore(out)
    builtin, user = stores["classification"], stores["user_losses_ce:ce"]
    for analysis, name in (("interpolation", "test_loss"), ("surface", "loss")):
        keys = builtin.keys(analysis)
        assert keys and keys == user.keys(analysis)
        for k in keys:
            a, b = builtin.read(k), user.read(k)
            assert np.array_equal(a[name], b[name]), k  # same operations, same numbers
            assert a.attrs["settings"]["loss"] == "classification"
            assert b.attrs["settings"]["loss"] == "user_losses_ce:ce"
    for k in builtin.keys("hessian"):
        a, b = builtin.read(k), user.read(k)
        np.testing.assert_allclose(a["eigenvalues"], b["eigenvalues"], rtol=1e-3)  # converged
        assert b.attrs["settings"]["loss"] == "user_losses_ce:ce"
        assert a.attrs["loss"] == b.attrs["loss"]
    # landscape run passes --loss to its studies
    out = tmp_path / "study"
    argv = ["run", str(tiny_runs), *common, "--analyses", "interpolation", "-o", str(out)]
    assert main([*argv, "--loss", "user_losses_ce:ce"]) == 0
    st = ResultsStore(out / "results.h5")
    rec = st.read(st.keys("interpolation")[0])
    assert rec.attrs["settings"]["loss"] == "user_losses_ce:ce"


def test_lm_on_the_command_line_with_a_transformer_on_text(tmp_path):
    """``--loss lm`` end to end: zoo transformers predicting every position of ``text:FILE``
    windows; the curve's endpoint is the hand-computed token mean of model A."""
    import numpy as np

    from analysis.cli import main
    from checkpoints import load_model, save_checkpoint
    from checkpoints.sources import load_data
    from landscape.store import ResultsStore

    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog. " * 12)
    spec = f"text:{tmp_path / 'book.txt'}:8"
    X, Y = load_data(spec, "test").pair
    vocab = load_data(spec, "test").description["vocab_size"]
    for s in (0, 1):
        m = zoo.build(
            "transformer", "standard", vocab_size=vocab, max_len=8, width=16, heads=2,
            all_positions=True, seed=s,
        )  # fmt: skip
        d = tmp_path / "runs" / "standard" / f"seed{s}"
        d.mkdir(parents=True)
        save_checkpoint(m, d / "final.pt")
    out = tmp_path / "r.h5"
    common = ["--data", spec, "--loss", "lm", "-q", "-o", str(out)]
    argv = ["interpolate", str(tmp_path / "runs"), "--num-points", "3", "--no-mli"]
    assert main([*argv, "--splits", "test", *common]) == 0
    assert (
        main(["surface", str(tmp_path / "runs"), "--steps", "3", "--split", "test", *common]) == 0
    )
    st = ResultsStore(out)
    rec = st.read("interpolation/standard/seed0-seed1")
    a = load_model(tmp_path / "runs" / "standard" / "seed0" / "final.pt")
    with torch.no_grad():
        z = a(X).double()
    want = float(F.cross_entropy(z.reshape(-1, vocab), Y.reshape(-1)))  # every token counts
    assert rec["test_loss"][0] == pytest.approx(want, rel=1e-6)
    assert rec.attrs["settings"]["loss"] == "lm"
    surf = st.read("surface/standard/seed0")
    assert surf.attrs["origin_loss"] == pytest.approx(want, rel=1e-6)
    assert np.isfinite(surf["loss"]).all() and surf.attrs["settings"]["loss"] == "lm"
    # landscape run: calibration (class probabilities per sample) is skipped for a token loss
    study = tmp_path / "study"
    argv = ["run", str(tmp_path / "runs"), "--data", spec, "--loss", "lm", "-o", str(study)]
    assert main([*argv, "--analyses", "interpolation,calibration", "-q"]) == 0
    st = ResultsStore(study / "results.h5")
    assert st.keys("interpolation") and not st.keys("calibration")
