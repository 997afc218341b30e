"""The benchmark runner: the smoke suite end to end, failure isolation, table rendering, timing helpers."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import run as runner  # noqa: E402
from benchmarks import timing  # noqa: E402


def test_smoke_suite_writes_markdown_and_csv_with_a_row_per_module(tmp_path):
    out = tmp_path / "bench" / "smoke.md"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = out.read_text()
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    present = runner.discover()
    assert "interpolation" in present
    assert f"torch: {torch.__version__}" in md and "dense matmul rate" in md
    for name in present:
        line = next((ln for ln in md.splitlines() if ln.startswith(f"| {name} |")), None)
        assert line is not None, f"no row for module {name} in the modules table"
        assert line.split("|")[2].strip() in ("ok", "skipped"), line
        assert any(r["module"] == name for r in rows), f"no CSV row for module {name}"
    # the interpolation module's own rows: three tools, a finite ratio and a target verdict
    mine = [r for r in rows if r["module"] == "interpolation"]
    assert len(mine) == 3 and float(mine[-1]["ratio"]) > 0 and mine[-1]["met"] in ("True", "False")
    assert abs(float(mine[-1]["forward_passes"]) - 1.0) < 1e-9
    assert float(mine[-1]["error"]) < 1e-4
    print(f"smoke suite: {elapsed:.1f} s")  # visible with -s; the brief asks for under ~60 s


@pytest.fixture()
def fake_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bench_fail.py").write_text(
        "def run(smoke):\n    raise RuntimeError('boom\\nsecond line')\n"
    )
    (pkg / "bench_notool.py").write_text("import pyhessian_missing_probe\n")
    (pkg / "bench_tool.py").write_text(
        "def run(smoke):\n    import rebasin.not_a_module_for_sure\n"
    )
    (pkg / "bench_slow.py").write_text(
        "import time\ndef run(smoke):\n    time.sleep(5)\n    return []\n"
    )
    (pkg / "bench_bad.py").write_text("def run(smoke):\n    return {'case': 'x'}\n")
    (pkg / "bench_good.py").write_text(
        "def run(smoke, device='cpu'):\n"
        "    return [{'tool': 'a', 'time_s': 2.0, 'time_min_s': 1.0, 'time_max_s': 3.0, 'ratio': 0.5, 'ratio_of': 'a / b',\n"
        "             'target': 'ratio <= 1', 'met': True, 'note': 'x|y', 'smoke': smoke, 'device': device},\n"
        "            {'tool': 'b', 'time_s': (4.0, 3.5, 5.0), 'ratio': 2.0, 'target': 'ratio <= 1', 'met': False}]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fakebench"


def test_failures_are_rows_not_crashes(fake_modules):
    fail = runner.run_module(f"{fake_modules}.bench_fail", smoke=True)
    assert fail.status == "FAILED" and fail.message.startswith(
        "RuntimeError: boom (bench_fail.py:2)"
    )
    # a module importing a package that is not a comparison tool is a failure, one that is a tool is skipped
    assert runner.run_module(f"{fake_modules}.bench_notool", smoke=True).status == "FAILED"
    tool = runner.run_module(f"{fake_modules}.bench_tool", smoke=True)
    assert tool.status == "skipped" and "rebasin not installed" in tool.message
    bad = runner.run_module(f"{fake_modules}.bench_bad", smoke=True)
    assert bad.status == "FAILED" and "expected a list of dicts" in bad.message
    t0 = time.perf_counter()
    slow = runner.run_module(f"{fake_modules}.bench_slow", smoke=True, timeout=0.3)
    assert slow.status == "FAILED" and "timed out" in slow.message and time.perf_counter() - t0 < 3
    assert runner.run_module("benchmarks.bench_does_not_exist", smoke=True).status == "FAILED"


def test_render_and_csv(fake_modules, tmp_path):
    good = runner.run_module(f"{fake_modules}.bench_good", smoke=True, device="cpu")
    assert good.status == "ok" and good.rows[0]["case"] == "good" and good.rows[0]["smoke"] is True
    fail = runner.run_module(f"{fake_modules}.bench_fail", smoke=True)
    md = runner.render(
        [good, fail], {"CPU": "test"}, (100.0, 90.0, 110.0), smoke=True, command="x", seconds=1.0
    )
    lines = md.splitlines()
    row_a = next(ln for ln in lines if ln.startswith("| a |"))
    row_b = next(ln for ln in lines if ln.startswith("| b |"))
    assert "2 (1–3)" in row_a and row_a.rstrip().endswith("| met | x\\|y |")
    assert "4 (3.5–5)" in row_b and "| MISSED |" in row_b
    assert "- ratio: a / b" in lines and "ratio_of" not in md  # descriptions become a legend
    assert "| fail | FAILED | 0 |" in md and "RuntimeError: boom" in md
    cells = [
        ln for ln in lines if ln.startswith("| ") and "| target |" not in ln
    ]  # rows, not headers
    assert (
        sum("| MISSED |" in ln for ln in cells) == 2 and sum("| met |" in ln for ln in cells) == 2
    )  # case table + targets
    path = tmp_path / "r.csv"
    runner.write_csv(path, [good, fail])
    rows = list(csv.DictReader(open(path)))
    assert [r["status"] for r in rows] == ["ok", "ok", "FAILED"]
    assert (
        rows[1]["time_s"] == "4.0"
        and rows[1]["time_s_min"] == "3.5"
        and rows[1]["time_s_max"] == "5.0"
    )


def test_unknown_module_name_is_refused(tmp_path, capsys):
    assert runner.main(["--smoke", "--only", "nope", "--out", str(tmp_path / "x.md")]) == 2
    assert "no benchmark module nope" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_measure_reports_median_min_max_after_warmup():
    sleeps = iter([0.0, 0.02, 0.12, 0.07])  # the first call is the warm-up
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(sleeps))

    med, lo, hi = timing.measure(fn, repeats=3, warmup=1)
    assert len(calls) == 4
    assert 0.02 <= lo < 0.07 <= med < 0.12 <= hi


def test_matmul_rate_and_flop_count():
    med, lo, hi = timing.matmul_rate_spread(96, repeats=3)
    assert 0 < lo <= med <= hi
    assert timing.matmul_rate(96) == med  # cached: one figure per run
    layer = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    assert timing.forward_flops(layer, torch.randn(5, 10)) == 2 * 5 * (10 * 20 + 20 * 3)
