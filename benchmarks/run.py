"""Run every benchmark module and write one markdown report with a CSV beside it.

``python -m benchmarks.run [--smoke] [--only NAME,...] [--device cpu] --out FILE.md``

The machine is described first (CPU model, cores, versions, torch threads) and its dense
matmul rate measured in the same process; then each ``benchmarks/bench_<name>.py`` runs in
turn. A module that raises, times out, or needs a comparison tool that is not installed
becomes a row saying so: the suite never stops half-way. Exit status: 0 when every module
ran or was skipped for a missing tool, 1 when a module failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import io
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from landscape.atomic import write_atomic

from . import COMPARISON_TOOLS
from .timing import matmul_rate_spread

HERE = Path(__file__).resolve().parent
FIRST = ["tool"]
LAST = ["target", "met", "note"]


@dataclass
class ModuleResult:
    """What one benchmark module gave back: ``status`` is ``ok``, ``skipped`` or ``FAILED``."""

    name: str
    status: str
    seconds: float
    rows: list[dict] = field(default_factory=list)
    message: str = ""


class _Timeout(Exception):
    pass


def discover() -> list[str]:
    """Short names (``hessian`` for ``bench_hessian.py``) of the benchmark modules present."""
    return sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))


def _missing_tool(exc: BaseException) -> str | None:
    """The PyPI name of the comparison tool whose absence raised ``exc``, else None."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, ModuleNotFoundError) and e.name:
            top = e.name.split(".")[0]
            if top in COMPARISON_TOOLS:
                return COMPARISON_TOOLS[top]
    return None


def run_module(
    name: str, smoke: bool, device: str = "cpu", timeout: float | None = None
) -> ModuleResult:
    """Import ``benchmarks.bench_<name>`` (or the dotted module ``name``) and call its ``run``.

    Never raises: failures, timeouts and missing comparison tools come back as a result
    with that status and a one-line message.
    """
    modname = name if "." in name else f"benchmarks.bench_{name}"
    short = name.rsplit(".", 1)[-1].removeprefix("bench_")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    use_alarm = (
        bool(timeout)
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    t0 = time.perf_counter()

    def on_alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, float(timeout))
        torch.manual_seed(0)
        module = importlib.import_module(modname)
        fn = getattr(module, "run", None)
        if not callable(fn):
            raise TypeError(f"{modname} has no run(smoke) function")
        accepts_device = "device" in inspect.signature(fn).parameters
        rows = fn(smoke=smoke, device=device) if accepts_device else fn(smoke=smoke)
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
            raise TypeError(
                f"{modname}.run returned {type(rows).__name__}, expected a list of dicts"
            )
        out = [dict(r) for r in rows]
        for r in out:
            r.setdefault("case", short)
        return ModuleResult(short, "ok", time.perf_counter() - t0, out)
    except _Timeout:
        return ModuleResult(
            short, "FAILED", time.perf_counter() - t0, message=f"timed out after {timeout:g} s"
        )
    except Exception as exc:  # noqa: BLE001 - one failing module must not stop the suite
        tool = _missing_tool(exc)
        if tool:
            msg = f"comparison tool {tool} not installed (pip install '.[bench]' or make bench)"
            return ModuleResult(short, "skipped", time.perf_counter() - t0, message=msg)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} ({Path(where.filename).name}:{where.lineno})"
        return ModuleResult(short, "FAILED", time.perf_counter() - t0, message=msg)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # a module that changes global torch state must not change the next one's figures
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def machine(device: str = "cpu") -> dict[str, str]:
    """Description of this machine and software, for the report's header."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    import numpy

    info = {
        "CPU": cpu,
        "cores": f"{usable} usable of {os.cpu_count()}",
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": device,
    }
    if torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    from importlib.metadata import PackageNotFoundError, version

    tools = []
    for dist in COMPARISON_TOOLS.values():
        try:
            tools.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            tools.append(f"{dist} (not installed)")
    info["comparison tools"] = ", ".join(tools)
    return info


# ----------------------------------------------------------------------------- formatting
def _spread_keys(keys: list[str]) -> dict[str, tuple[str, str]]:
    """``{K: (K_min, K_max)}`` for each key that has both companions."""
    found = {}
    for k in keys:
        for lo, hi in (
            (f"{k}_min", f"{k}_max"),
            (f"{k[:-2]}_min_s", f"{k[:-2]}_max_s") if k.endswith("_s") else (None, None),
        ):
            if lo in keys and hi in keys:
                found[k] = (lo, hi)
    return found


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}"


def fmt(key: str, value) -> str:
    """One table cell: ``met``/``MISSED`` for target flags, ``median (min–max)`` for 3-tuples."""
    if key == "met" or key.endswith("_met"):
        return "n/a" if value is None or value == "" else ("met" if value else "MISSED")
    if (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(x, (int, float)) for x in value)
    ):
        return f"{_num(value[0])} ({_num(value[1])}–{_num(value[2])})"
    if isinstance(value, (int, float)) or value is None:
        return _num(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def columns(rows: list[dict]) -> list[str]:
    """Keys of ``rows`` in reading order: tool first; target, met, note last; the rest as first seen."""
    seen: list[str] = []
    for r in rows:
        seen += [k for k in r if k not in seen and k not in ("case", "module")]
    return (
        [k for k in FIRST if k in seen]
        + [k for k in seen if k not in FIRST + LAST]
        + [k for k in LAST if k in seen]
    )


def table(rows: list[dict]) -> list[str]:
    """Markdown lines of one case's table; spread companions fold into their median's cell."""
    keys = columns(rows)
    spread = _spread_keys(keys)
    # "ratio_of"-style descriptions go under the table, not into a column of repeated words
    legend = {k: sorted({str(r[k]) for r in rows if r.get(k)}) for k in keys if k.endswith("_of")}
    hidden = {k for pair in spread.values() for k in pair} | set(legend)
    shown = [k for k in keys if k not in hidden]
    head = [f"{k} (min–max)" if k in spread else k for k in shown]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for k in shown:
            if k in spread and all(isinstance(r.get(x), (int, float)) for x in (k, *spread[k])):
                cells.append(fmt(k, (r[k], r[spread[k][0]], r[spread[k][1]])))
            else:
                cells.append(fmt(k, r.get(k, "")) if k in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] * bool(legend) + [
        f"- {k[:-3]}: {fmt(k, '; '.join(v))}" for k, v in legend.items()
    ]
    return lines


def headline(row: dict) -> str:
    """The figure a target is judged on: the ratio when there is one, else the error."""
    for k in ("ratio", "error"):
        if isinstance(row.get(k), (int, float)):
            return f"{k} {fmt(k, row[k])}"
    return ""


def render(
    results: list[ModuleResult],
    info: dict[str, str],
    rate: tuple[float, float, float],
    *,
    smoke: bool,
    command: str,
    seconds: float,
) -> str:
    """The whole markdown report."""
    out = [
        "# Benchmarks" + (" (smoke run: tiny sizes, figures not meaningful)" if smoke else ""),
        "",
        f"`{command}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {seconds:.1f} s in all.",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += [
        f"- dense matmul rate: {rate[0]:.1f} GFLOP/s (min–max {rate[1]:.1f}–{rate[2]:.1f}; float32, median of repeats, this process)",
        "",
    ]
    out += [
        "## Modules",
        "",
        "| module | status | rows | seconds | message |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {m.name} | {m.status} | {len(m.rows)} | {m.seconds:.1f} | {fmt('message', m.message)} |"
        for m in results
    ]
    targets = [(m.name, r) for m in results for r in m.rows if r.get("target")]
    if targets:
        out += [
            "",
            "## Targets",
            "",
            "| module | case | tool | figure | target | result |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {n} | {fmt('case', r['case'])} | {fmt('tool', r.get('tool', ''))} | {headline(r)} | {fmt('target', r['target'])} "
            f"| {fmt('met', r.get('met'))} |"
            for n, r in targets
        ]
    for m in results:
        cases: dict[str, list[dict]] = {}
        for r in m.rows:
            cases.setdefault(str(r["case"]), []).append(r)
        for case, rows in cases.items():
            out += ["", f"## {m.name}: {case}", ""] + table(rows)
    out += [
        "",
        "Times are medians over repeats with (min–max) beside them. Ratios compare tools measured in this process, "
        "back to back or in alternating rounds; the legend under a table says what each ratio divides. "
        "A target reads `met` or `MISSED`; `n/a` where none applies. How to read: docs/benchmarks.md.",
        "",
    ]
    return "\n".join(out)


def write_csv(path: Path, results: list[ModuleResult]) -> None:
    """All rows in one CSV (3-tuples split into ``K``, ``K_min``, ``K_max``), plus one row per skipped or failed module."""
    flat: list[dict] = []
    for m in results:
        if m.status != "ok":
            flat.append({"module": m.name, "case": m.name, "status": m.status, "note": m.message})
        for r in m.rows:
            row = {"module": m.name, "status": m.status}
            for k, v in r.items():
                if isinstance(v, (tuple, list)) and len(v) == 3:
                    row[k], row[f"{k}_min"], row[f"{k}_max"] = v
                else:
                    row[k] = v
            flat.append(row)
    keys: list[str] = []
    for r in flat:
        keys += [k for k in r if k not in keys]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys, restval="")
    w.writeheader()
    w.writerows(flat)
    write_atomic(path, text.getvalue().encode("utf-8"), option="--out", what="table")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, a few seconds per module (the test suite runs this)",
    )
    p.add_argument(
        "--only", default="", help="comma-separated module names, e.g. hessian,interpolation"
    )
    p.add_argument(
        "--out",
        default="BENCHMARKS.md",
        help="markdown report; the CSV goes beside it (default: BENCHMARKS.md)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="passed to modules whose run() takes a device (default: cpu)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per module (default: 120 smoke, 1800 full)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = p.parse_args(argv)

    present = discover()
    names = present
    if args.only:
        names = [
            n.strip().removeprefix("bench_").removesuffix(".py")
            for n in args.only.split(",")
            if n.strip()
        ]
        unknown = [n for n in names if n not in present]
        if unknown:
            print(
                f"error: no benchmark module {', '.join(unknown)}: present are {', '.join(present) or 'none'}",
                file=sys.stderr,
            )
            return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {args.device} asked for, but CUDA is not available here: use --device cpu",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    timeout = args.timeout if args.timeout is not None else (120.0 if args.smoke else 1800.0)
    t0 = time.perf_counter()
    info = machine(args.device)
    rate = matmul_rate_spread(
        1024 if args.smoke else 2048, device=args.device, repeats=5 if args.smoke else 9
    )
    print(f"[bench] dense matmul rate {rate[0]:.1f} GFLOP/s", file=sys.stderr)

    results = []
    for n in names:
        print(f"[bench] {n} ...", file=sys.stderr, flush=True)
        res = run_module(n, args.smoke, args.device, timeout)
        print(
            f"[bench] {n}: {res.status} in {res.seconds:.1f} s {res.message}",
            file=sys.stderr,
            flush=True,
        )
        results.append(res)

    out = Path(args.out)
    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    page = render(
        results,
        info,
        rate,
        smoke=args.smoke,
        command=command.strip(),
        seconds=time.perf_counter() - t0,
    )
    write_atomic(out, page.encode("utf-8"), option="--out", what="report")
    write_csv(out.with_suffix(".csv"), results)

    print(f"{'module':<16} {'status':<8} {'rows':>4} {'seconds':>8}  targets")
    for m in results:
        flags = [r.get("met") for r in m.rows if r.get("target")]
        summary = (
            f"{sum(f is True for f in flags)} met, {sum(f is False for f in flags)} missed"
            if flags
            else m.message
        )
        print(f"{m.name:<16} {m.status:<8} {len(m.rows):>4} {m.seconds:>8.1f}  {summary}")
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 1 if any(m.status == "FAILED" for m in results) else 0


if __name__ == "__main__":
    sys.exit(main())
