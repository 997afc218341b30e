import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from analysis.cli import main
from landscape.store import ResultsStore


def test_interpolate_writes_every_curve_and_prints_table(tiny_runs, tmp_path, capsys):
    out = tmp_path / "r.h5"
    assert (
        main(
            [
                "interpolate",
                str(tiny_runs),
                "--data",
                "digits",
                "--samples",
                "100",
                "--num-points",
                "5",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "loss barrier" in text and "w-asym" in text and "standard" in text
    store = ResultsStore(out)
    assert store.keys("interpolation") == [
        "interpolation/standard/seed0-seed1",
        "interpolation/w-asym/seed0-seed1",
    ]
    assert len(store.keys("mli")) == 4
    rec = store.read("interpolation/w-asym/seed0-seed1")
    for k in ("alpha", "test_loss", "test_accuracy", "train_loss", "train_accuracy"):
        assert rec[k].shape == (5,)
    a = rec.attrs
    assert a["test_loss_barrier_max"] == pytest.approx(
        max(rec["test_loss"] - np.linspace(rec["test_loss"][0], rec["test_loss"][-1], 5))
    )
    assert (
        a["data"]["test"]["size"] == 100
        and a["settings"]["bn"] == "eval"
        and len(a["checkpoint_sha256"][0]) == 64
    )
    assert a["seeds"] == ["seed0", "seed1"] and a["variant"] == "w-asym" and "torch_version" in a
    assert rec.dataset_attrs["test_loss"]["axes"] == ["alpha"]
    m = store.read("mli/standard/seed0").attrs
    assert set(m) >= {"delta", "monotonic", "local_convexity", "global_convexity"}
    # a rerun skips complete records (same file, same numbers, no rewrite)
    mtime = out.stat().st_mtime_ns
    assert (
        main(
            [
                "interpolate",
                str(tiny_runs),
                "--data",
                "digits",
                "--samples",
                "100",
                "--num-points",
                "5",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert out.stat().st_mtime_ns == mtime


def test_killed_study_resumes_to_identical_numbers(tiny_runs, tmp_path):
    args = [str(tiny_runs), "--data", "digits", "--samples", "100", "--num-points", "25", "-q"]
    ref = tmp_path / "ref.h5"
    assert main(["interpolate", *args, "-o", str(ref)]) == 0
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis.cli", "interpolate", *args, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            try:
                if ResultsStore(out).keys():
                    break
            except Exception:
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = ResultsStore(out).keys()  # the file is readable after kill -9
    assert main(["interpolate", *args, "-o", str(out)]) == 0
    a, b = ResultsStore(ref), ResultsStore(out)
    assert a.keys() == b.keys() and len(partial) <= len(a.keys())
    for k in a.keys():
        for name, arr in a.read(k).datasets.items():
            assert np.array_equal(arr, b.read(k)[name]), (k, name)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_old_flag_still_works_with_one_deprecation_line(tiny_runs, tmp_path, capsys):
    """Renamed flags keep their old spelling for one release (docs/glossary.md)."""
    args = [str(tiny_runs), "--data", "digits", "--samples", "60", "--no-mli", "-q"]
    assert main(["interpolate", *args, "--points", "3", "-o", str(tmp_path / "a.h5")]) == 0
    err = capsys.readouterr().err
    assert "--points is deprecated" in err and "use --num-points" in err
    assert main(["interpolate", *args, "--num-points", "3", "-o", str(tmp_path / "b.h5")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    a = ResultsStore(tmp_path / "a.h5").read("interpolation/standard/seed0-seed1")
    b = ResultsStore(tmp_path / "b.h5").read("interpolation/standard/seed0-seed1")
    assert a["alpha"].shape == (3,) and np.array_equal(a["test_loss"], b["test_loss"])
