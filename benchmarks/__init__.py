"""Benchmarks of this toolkit against the tools people use today, run side by side.

``python -m benchmarks.run [--smoke] [--only NAME,...] --out FILE.md`` imports every
``benchmarks/bench_<name>.py`` present and calls its ``run(smoke: bool) -> list[dict]``
(``run(smoke, device=...)`` when the function accepts a ``device`` argument). Each dict
is one row of a result table; rows with the same ``case`` form one table. Recognised
keys (any other key becomes a column as it is):

``case``            the table the row belongs to (model, data, settings); default: module name
``tool``            which implementation the row measures (``landscape``, ``pyhessian``, ...)
``time_s``          median wall time in seconds, with ``time_min_s`` / ``time_max_s`` and ``repeats``
``ratio``           the headline ratio of the case (say what over what in ``ratio_of``)
``hvps``            Hessian-vector products used; ``forward_passes``: passes over the data
``error``           error against ground truth (say which in ``error_of``)
``target``          the target in words (``ratio <= 1.1``); ``met``: True / False / None
``note``            anything a reader needs (a skipped comparison, a setting)

Any key ``K`` with companions ``K_min`` and ``K_max`` (or ``X_s`` with ``X_min_s`` and
``X_max_s``) is printed as ``median (min-max)``; a 3-tuple value is read the same way.
Shared timing helpers live in :mod:`benchmarks.timing`.
"""

#: Importable names of the comparison tools, with the PyPI distribution that provides each.
COMPARISON_TOOLS = {
    "pyhessian": "pyhessian",
    "hessian_eigenthings": "hessian-eigenthings",
    "loss_landscapes": "loss-landscapes",
    "rebasin": "rebasin",
}
