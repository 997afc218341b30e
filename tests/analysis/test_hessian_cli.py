"""`landscape hessian` on the tiny trained checkpoint set (conftest's ``tiny_runs``: train_group, 2 epochs)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.cli import main
from checkpoints import load_model
from checkpoints.sources import load_data
from landscape import evaluate, hessian_eigenvalues
from landscape.store import ResultsStore

ARGS = [
    "--data",
    "digits",
    "--samples",
    "150",
    "--top-k",
    "3",
    "--num-queries",
    "12",
    "--device",
    "cpu",
    "-q",
]


def test_hessian_writes_records_and_prints_the_group_table(tiny_runs, tmp_path, capsys):
    out = tmp_path / "r.h5"
    rc = main(
        [
            "hessian",
            str(tiny_runs),
            *ARGS,
            "--density",
            "--num-runs",
            "3",
            "--lanczos-steps",
            "20",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "lambda_max" in text and "negative mass" in text and "w-asym" in text
    assert "standard" in text
    store = ResultsStore(out)
    keys = store.keys("hessian")
    assert keys == [f"hessian/{g}/seed{s}" for g in ("standard", "w-asym") for s in (0, 1)]
    rec = store.read("hessian/w-asym/seed1")
    a = rec.attrs
    top, bottom = rec["eigenvalues"], rec["smallest"]
    assert (
        top.shape == bottom.shape == (3,)
        and np.all(np.diff(top) <= 0)
        and np.all(np.diff(bottom) >= 0)
    )
    assert (
        a["lambda_max"] == top[0]
        and a["lambda_min"] == bottom[0]
        and a["lambda_min"] < a["lambda_max"]
    )
    assert rec["converged"].all() and rec["smallest_converged"].all() and a["all_converged"]
    assert (
        np.isfinite(a["trace"]) and a["trace_stderr"] > 0 and rec["trace_samples"].shape == (4,)
    )  # 12 queries: 4 + 4 + 4
    assert np.trapezoid(rec["density"], rec["eigenvalue"]) == pytest.approx(1.0, abs=1e-3)
    assert (
        rec["slq_nodes"].shape == rec["slq_weights"].shape == (3, 20)
        and 0 <= a["negative_mass"] <= 1
    )
    assert rec.dataset_attrs["density"]["axes"] == ["eigenvalue"] and rec.dataset_attrs[
        "slq_nodes"
    ]["axes"] == ["run", "node"]
    assert (
        a["settings"]["top_k"] == 3
        and a["settings"]["split"] == "train"
        and a["data"]["train"]["size"] == 150
    )
    assert a["variant"] == "w-asym" and len(a["checkpoint_sha256"][0]) == 64 and a["hvps"] > 0
    # the record is the Hessian of the recorded model on the recorded data
    model = load_model(a["checkpoints"][0])
    data = load_data("digits", "train", samples=150)
    assert a["loss"] == pytest.approx(evaluate(model, data.pair).loss, rel=1e-6)
    again = hessian_eigenvalues(model, data.pair, k=3, which="both")
    assert np.allclose(again.eigenvalues, np.concatenate([top, bottom]), rtol=1e-4)
    # rerunning skips complete records: the file is not rewritten
    mtime = out.stat().st_mtime_ns
    assert (
        main(
            [
                "hessian",
                str(tiny_runs),
                *ARGS,
                "--density",
                "--num-runs",
                "3",
                "--lanczos-steps",
                "20",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert out.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--params", "nothing.*"], "no trainable parameters"),
        (["--top-k", "100000"], "k=100000"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tiny_runs, tmp_path, capsys, extra, message):
    out = tmp_path / "bad.h5"
    assert main(["hessian", str(tiny_runs), *ARGS, *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not ResultsStore(out).keys("hessian")


def test_labels_out_of_range_exit_2(tiny_runs, tmp_path, capsys):
    data = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(
        data, X=rng.standard_normal((40, 64)).astype(np.float32), y=rng.integers(0, 20, 40)
    )  # models have 10 outputs
    out = tmp_path / "bad.h5"
    assert (
        main(
            [
                "hessian",
                str(tiny_runs),
                "--data",
                f"npz:{data}",
                "--top-k",
                "2",
                "-q",
                "-o",
                str(out),
            ]
        )
        == 2
    )
    assert "labels range" in capsys.readouterr().err
    assert not out.exists() or not ResultsStore(out).keys("hessian")


def test_one_krylov_pass_serves_density_trace_and_eigenvalues(tiny_runs, tmp_path):
    """With --density and no query count: the trace from the density runs, the eigenvalue
    solve continuing one of them; every product counted once, the saving on record."""
    out = tmp_path / "one.h5"
    argv = ["hessian", str(tiny_runs), "--data", "digits", "--samples", "150", "--top-k", "3"]
    argv += ["--density", "--num-runs", "4", "--lanczos-steps", "30", "--budget", "0.25"]
    assert main([*argv, "-q", "-o", str(out)]) == 0
    rec = ResultsStore(out).read("hessian/w-asym/seed0")
    a = rec.attrs
    # --budget 0.25 halves runs and steps: a quarter of the density's products
    assert a["settings"]["num_runs"] == 2 and a["settings"]["lanczos_steps"] == 15
    assert rec["slq_nodes"].shape == (2, 15) and a["density_hvps"] == 30
    assert a["trace_estimator"] == "slq" and a["trace_hvps"] == 0
    assert rec["trace_samples"].shape == (2,) and a["trace"] == pytest.approx(a["slq_trace"])
    assert a["eigen_start"] == "density run" and a["lanczos_block_size"] == 1
    assert a["eigen_hvps"] == max(0, a["lanczos_steps_used"] - 15)
    assert a["hvps"] == a["density_hvps"] + a["eigen_hvps"]
    model = load_model(a["checkpoints"][0])
    data = load_data("digits", "train", samples=150)
    fresh = hessian_eigenvalues(model, data.pair, k=3, which="both", block_size=1)
    assert np.allclose(
        fresh.eigenvalues, np.concatenate([rec["eigenvalues"], rec["smallest"]]), rtol=1e-4
    )
