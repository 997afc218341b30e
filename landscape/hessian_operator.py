"""The one Hessian-vector-product operator.

The Hessian is that of the exact sample-mean loss over the whole data,

    L(theta) = (1/N) sum_{i=1..N} l(f(x_i; theta), y_i),        H = d^2 L / d theta^2,

with ``l`` the per-unit loss of the operator's ``objective`` (:mod:`landscape.objectives`;
default ``auto``: cross-entropy for integer targets, squared error for float targets; for a
token-level loss such as ``lm`` the units are tokens and ``N`` counts them), the model in eval mode (BatchNorm uses its
running statistics) and ``theta`` the coordinates of a :class:`~landscape.params.ParamView`:
all trainable entries or a chosen subset, never the fixed entries of W-Asym layers.
Batches of any sizes give the same ``H``: each batch contributes the Hessian of its
*sum* of losses, and the total is divided by ``N`` once.

:class:`HessianOperator` follows the conventions of ``scipy.sparse.linalg.LinearOperator``:
``shape == (n, n)``, vectors are columns, ``op @ v`` is ``H v`` for a vector ``(n,)`` and
``H V`` for a matrix ``(n, k)`` (column ``j`` of the result is ``H v_j``), and a NumPy input
gives a NumPy output, a torch input a torch output, with the same numbers.

Products (``hvp=``): hand-derived passes for chains of dense layers (``"analytic"``,
:mod:`landscape.chain_hvp`: MLPs of Linear, LayerNorm, BatchNorm and elementwise activations
under cross-entropy or squared error), double backward (``"double-backward"``:
``autograd.grad`` of the gradient with ``create_graph=True``) or forward-over-reverse
(``"forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad``, under ``vmap`` for
several vectors). ``"auto"`` (the default) takes the analytic products when the model is such
a chain and double backward otherwise; :attr:`HessianOperator.implementation` says which ran
and :attr:`HessianOperator.fallback` why the analytic one did not. What the products keep
between calls (the chain's activations and backpropagated gradients, or the gradient graph
of every batch) is kept when its estimated size fits :data:`CACHE_BYTES_CPU` / a quarter of
free GPU memory (``cache="auto"``), otherwise recomputed per product.

Nothing is computed when the operator is built: the first product builds the graphs, and
their forward pass gives the loss (``op.loss``) and checks the labels and the loss for NaN
(:class:`UserError`), so construction costs no pass over the data of its own.

Several vectors at once (``matmat``) go through one batched product (the analytic passes
on a leading dimension of vectors; a batched backward, ``is_grads_batched``, i.e. ``vmap``)
in blocks of ``block`` vectors. ``block="auto"`` batches 8 at a time when
:meth:`block_costs` (measured: the first product's time and, for autograd products, the
per-call overheads on a slice of at most 8 samples) says a batched product costs less per
vector, and loops otherwise; the analytic products are always batched 8 at a time.
``block_size="auto"`` in :func:`landscape.lanczos.lanczos_eigen` reads the same estimates;
:meth:`product_seconds` gives the measured times.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import chain_hvp
from .batch import call, call_args
from .data import Batches, Data, as_batches, resolve_device
from .deprecation import renamed_keywords
from .errors import UserError
from .evaluation import eval_mode, evaluate
from .objectives import resolve_objective
from .params import ParamView, Selection

#: largest gradient graph kept between products on the CPU (bytes)
CACHE_BYTES_CPU = 1 * 1024**3
#: Hessian-vector-product implementations (``hvp=``)
HVP_IMPLEMENTATIONS = ("auto", "analytic", "double-backward", "forward-over-reverse")
#: vectors per batched product when ``block="auto"`` batches
AUTO_BATCH = 8
#: a product slower than this per batch of data (seconds) is taken as compute-bound, and its
#: per-call overhead as not worth measuring (one CPU thread: 0.8 ms a call of 8 ms for the
#: 16.5k-parameter benchmark MLP, 4 ms of 195 ms for the digits MLP of width 512)
COMPUTE_BOUND_S = 0.03
_NAN_LOSS = (
    "the loss is NaN or Inf on this data: check the checkpoint weights and the data normalisation"
)


class HessianOperator:
    """The linear operator ``v -> H v`` for the Hessian of the sample-mean loss of ``model`` on ``data``.

    ``H`` is ``n x n`` (``n``: the coordinates of ``ParamView(model, params)``) and symmetric.
    ``op @ v`` / :meth:`matvec` give ``H v`` for ``v`` of shape ``(n,)``; ``op @ V`` /
    :meth:`matmat` give ``H V`` for ``V`` of shape ``(n, k)`` (columns are vectors, as in
    ``scipy.sparse.linalg.LinearOperator``). NumPy in gives NumPy out, torch in gives torch
    out (on the operator's device). ``shape``, ``dtype`` (NumPy) and ``torch_dtype`` describe
    it; :meth:`aslinearoperator` wraps it for SciPy.

    ``objective`` is the loss (a name, an Objective, a callable or ``module:callable``;
    default ``auto``). ``params`` selects a subset of parameters (see :class:`ParamView`); ``hvp`` picks the
    product implementation (``"auto"``, ``"analytic"``, ``"double-backward"`` or
    ``"forward-over-reverse"``, see the module notes; ``method`` is its deprecated name); ``block`` the vectors per batched
    product (an integer, or ``"auto"``: measured). The operator is a snapshot: it is
    defined at the parameters the model holds when it is created; do not change the model
    while using it. ``hvps`` counts Hessian-vector products (one per vector, however
    batched). The model's train/eval flag is left as found.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        params: Selection = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        hvp: str = "auto",
        cache: bool | str = "auto",
        block: int | str | None = "auto",
        objective: Any = None,
        **renamed: Any,
    ):
        hvp = renamed_keywords(
            "HessianOperator",
            renamed,
            {"method": "hvp"},
            {"hvp": hvp},
            {"hvp": "auto"},
        )["hvp"]
        if hvp not in HVP_IMPLEMENTATIONS:
            raise UserError(
                f"unknown Hessian-vector-product implementation hvp={hvp!r}: use {' or '.join(HVP_IMPLEMENTATIONS)}"
            )
        if block is None:
            block = "auto"
        if block != "auto" and (not isinstance(block, (int, np.integer)) or block < 1):
            raise UserError(f"block must be a positive integer or 'auto', got {block!r}")
        first = next(iter(model.parameters()), None)
        if first is None:
            raise UserError("the model has no parameters: nothing to take a Hessian of")
        dev = resolve_device(device) if device is not None else first.device
        if first.device != dev:
            model = copy.deepcopy(model).to(dev)  # never move the caller's model
        self.model = model
        self.view = ParamView(model, select=params)
        self.batches: Batches = as_batches(
            data, device=dev, batch_size=batch_size, dtype=self.view.dtype
        )
        self.num_samples = self.batches.num_samples
        # the loss whose Hessian this is (default auto); its mean is over its units
        self.objective = resolve_objective(objective)
        self._units: int | None = None
        self.hvp, self.block = hvp, block if block == "auto" else int(block)
        self.hvps = 0
        self._params = self.view.params
        self._cache_setting = cache
        self._graphs: list[tuple[Tensor, ...]] | None = None
        # the analytic products' plan and the kept state of every batch (None: recomputed)
        self._plan: chain_hvp.Plan | None = None
        self._states: list[chain_hvp.BatchState] | None = None
        self._implementation = hvp if hvp in ("double-backward", "forward-over-reverse") else None
        self._fallback: str | None = None
        self._loss: float | None = None
        self._timings: dict[int, list[float]] = {}
        self._block_costs: dict[int, float] | None = None
        # False once a batched backward failed: some double-backward formulas (convolutions
        # through is_grads_batched in torch 2.13) have no batching rule, so vectors go one by one
        self._batching = True

    # -- properties --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.view.numel, self.view.numel)

    @property
    def n(self) -> int:
        return self.view.numel

    @property
    def dtype(self) -> np.dtype:
        """NumPy dtype of the products (``scipy.sparse.linalg.LinearOperator`` convention)."""
        return np.dtype(str(self.view.dtype).replace("torch.", ""))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The model's dtype, in which the products are computed."""
        return self.view.dtype

    @property
    def device(self) -> torch.device:
        return self.view.device

    @property
    def loss(self) -> float:
        """The sample-mean loss at the operator's parameters (from the first product's pass)."""
        self._prepare()
        return self._loss

    @property
    def cached(self) -> bool:
        """True when what the products need (gradient graphs, or the chain's states) is kept between products."""
        self._prepare()
        return self._graphs is not None or self._states is not None

    @property
    def implementation(self) -> str:
        """The product implementation that runs: ``"analytic"``, ``"double-backward"`` or
        ``"forward-over-reverse"`` (``hvp="auto"`` is resolved on the first product)."""
        self._prepare()
        return self._implementation

    @property
    def fallback(self) -> str | None:
        """Why ``hvp="auto"`` did not take the analytic products (None when it did, or was not asked)."""
        self._prepare()
        return self._fallback

    def product_seconds(self) -> dict[int, float]:
        """Measured wall time per vector of the products so far, by vectors per batched call
        (median over calls; graph building excluded)."""
        return {b: statistics.median(t) for b, t in sorted(self._timings.items())}

    # -- products ----------------------------------------------------------------------------
    def matvec(self, v: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``H v`` for one vector ``v`` of shape ``(n,)`` (or a column ``(n, 1)``: same shape out)."""
        if v.ndim == 2 and v.shape[1] == 1:
            return self.matvec(v.reshape(-1)).reshape(-1, 1)
        if v.ndim != 1 or v.shape[0] != self.n:
            raise UserError(f"expected a vector of shape ({self.n},), got {tuple(v.shape)}")
        if isinstance(v, np.ndarray):
            rows = torch.as_tensor(v.reshape(1, -1), dtype=self.torch_dtype, device=self.device)
            return self._on_rows(rows)[0].cpu().numpy()
        return self._on_rows(v.reshape(1, -1))[0]

    def matmat(self, V: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``H V`` for ``V`` of shape ``(n, k)``: column ``j`` of the result is ``H v_j``."""
        if V.ndim != 2 or V.shape[0] != self.n:
            raise UserError(
                f"expected a matrix of shape ({self.n}, k) (columns are vectors), got {tuple(V.shape)}"
            )
        if isinstance(V, np.ndarray):
            rows = torch.as_tensor(
                np.ascontiguousarray(V.T), dtype=self.torch_dtype, device=self.device
            )
            return self._on_rows(rows).cpu().numpy().T
        return self._on_rows(V.T.contiguous()).T

    def __matmul__(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``H x`` for a vector ``(n,)`` or a matrix ``(n, k)``."""
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    # H is symmetric: the adjoint products are the products (scipy looks for these names)
    rmatvec = matvec
    rmatmat = matmat

    def aslinearoperator(self):
        """The operator as a ``scipy.sparse.linalg.LinearOperator`` (NumPy vectors in the model's dtype)."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(
            self.shape,
            matvec=self.matvec,
            matmat=self.matmat,
            rmatvec=self.matvec,
            rmatmat=self.matmat,
            dtype=self.dtype,
        )

    @property
    def num_units(self) -> int:
        """Units the loss is the mean over: samples, or tokens for a token-level objective."""
        self._prepare()
        return self._units

    def _loss_sum(self, b) -> Tensor:
        """The objective's sum of per-unit losses on batch ``b`` (with its graph)."""
        return self.objective.loss_sum(call(self.model, b.inputs), b)

    def gradient(self) -> Tensor:
        """The gradient ``dL/dtheta`` of the mean loss (one pass over the data)."""
        total = None
        units = self.num_units
        with eval_mode(self.model), torch.enable_grad():
            for b in self.batches:
                g = torch.autograd.grad(self._loss_sum(b), self._params, allow_unused=True)
                g = self.view.flatten(
                    [torch.zeros_like(p) if a is None else a for a, p in zip(g, self._params)]
                )
                total = g if total is None else total + g
        return total / units

    # -- internals ---------------------------------------------------------------------------
    def _on_rows(self, V: Tensor) -> Tensor:
        """``(H v_1, ..., H v_b)`` as rows, for the rows of ``V`` (shape ``(b, n)``), in blocks."""
        V = V.to(self.device, self.torch_dtype)
        self._prepare()
        outs, i = [], 0
        while i < V.shape[0]:
            size = self._chunk(V.shape[0] - i)
            sync = self.device.type == "cuda"
            if sync:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            outs.append(self._products(V[i : i + size]))
            if sync:
                torch.cuda.synchronize(self.device)
            self._timings.setdefault(size, []).append((time.perf_counter() - t0) / size)
            i += size
        self.hvps += int(V.shape[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _chunk(self, remaining: int) -> int:
        """Vectors in the next batched product: ``block``, or with ``"auto"`` what :meth:`block_costs` favours."""
        if self.block != "auto":
            return min(self.block, remaining)
        if self._implementation == "analytic":
            return min(AUTO_BATCH, remaining)  # always cheaper per vector, and no timing decides
        if remaining == 1 or 1 not in self._timings:
            return 1  # a product alone first: its time is part of the measurement
        costs = self.block_costs()
        return min(AUTO_BATCH, remaining) if costs[AUTO_BATCH] < costs[1] else 1

    def block_costs(self) -> dict[int, float]:
        """Estimated wall time per vector of a product on a block of ``b = 1, 2, 4, 8`` vectors.

        A product costs a fixed overhead per batch of data and per call (autograd and, for
        several vectors, ``vmap`` bookkeeping) plus work per vector. The overheads are timed
        on a slice of the first batch (at most 8 samples and a sixteenth of the batch), where
        the work is negligible: ``o_1`` for one vector,
        ``o_8`` for a batched call of 8 (each times the number of data batches). The work per
        vector is the measured full product ``t_1`` less ``o_1``. A block of ``b`` then
        costs ``(o_1 + (o_8 - o_1) (b - 1) / 7) / b + (t_1 - o_1)`` per vector. Measured once
        (the first product's time, made here if none was), then kept. A product over
        :data:`COMPUTE_BOUND_S` per batch is not probed: every ``b`` then costs ``t_1``.

        The analytic products are not probed: their per-call overhead is small (0.4 ms of
        3 ms for the 16.5k-parameter benchmark MLP), so every ``b`` costs ``t_1`` here and
        Lanczos runs single-vector unless told otherwise (a batch of 8 measured 0.7-0.8 of
        ``t_1`` per vector, far from the share that would pay for block Lanczos' extra
        products); ``matmat`` still batches them 8 at a time, which costs less per vector.
        No timing decides anything about them, so their numbers do not vary from run to run.
        """
        if self.implementation == "analytic":
            return dict.fromkeys((1, 2, 4, AUTO_BATCH), self._t1())
        if self._block_costs is None:
            t1 = self._t1()
            if t1 / len(self.batches) > COMPUTE_BOUND_S:
                o1, o8 = 0.0, 0.0  # compute-bound: a batch saves no overhead worth measuring
            else:
                o1, o8 = self._overheads(t1)
            work = max(t1 - o1, 0.05 * t1)
            self._block_costs = {
                b: t1 if b == 1 else (o1 + (o8 - o1) * (b - 1) / 7) / b + work
                for b in (1, 2, 4, AUTO_BATCH)
            }
        return dict(self._block_costs)

    def _t1(self) -> float:
        """Median seconds of a one-vector product (one is made if none was)."""
        if 1 not in self._timings:
            g = torch.Generator().manual_seed(0)
            self.matvec(torch.randn(self.n, generator=g, dtype=torch.float64))
        return statistics.median(self._timings[1])

    def _overheads(self, t1: float) -> tuple[float, float]:
        """Per-call seconds of a product with one vector and with 8, on a slice of the first
        batch (at most 8 samples and a sixteenth of it, so that its work is negligible), times
        the number of batches (after one untimed call each; median of two for one vector, one
        call for 8).

        When one vector's overhead is under 30% of the full product ``t1``, no batch can be
        cheaper per vector than ``t1 - o_1 > 0.7 t1``, which is what block Lanczos must beat
        (``landscape.lanczos.BLOCK_MARGIN``, before its extra products): the batched call is
        not timed and counts as 8 single calls.
        """
        first = next(iter(self.batches))
        mini = HessianOperator(
            self.model,
            [first.rows(0, max(1, min(8, first.size // 16)))],
            params=self.view.names,
            hvp=self.implementation,
            block=AUTO_BATCH,
            objective=self.objective,
        )
        mini._prepare()
        g = torch.Generator().manual_seed(0)
        V = torch.randn(1, self.n, generator=g).to(self.device, self.torch_dtype)

        def timed(b: int, repeats: int) -> float:
            times = []
            for rep in range(repeats + 1):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                t0 = time.perf_counter()
                mini._products(V[:b])
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                if rep:
                    times.append(time.perf_counter() - t0)
            return len(self.batches) * statistics.median(times)

        o1 = timed(1, 2)
        if o1 < 0.3 * t1:
            return o1, AUTO_BATCH * o1
        V = torch.randn(AUTO_BATCH, self.n, generator=g).to(self.device, self.torch_dtype)
        if self.implementation == "double-backward":  # does a batched backward work here at all?
            try:
                mini._products_double_backward(V[:2])
            except RuntimeError:
                self._batching = False
                return o1, AUTO_BATCH * o1
        o8 = timed(AUTO_BATCH, 1)
        return o1, o8

    def _prepare(self) -> None:
        """The loss, the label and NaN checks, and what the products keep (the chain's states,
        or the gradient graphs), all in one pass over the data: what the first product needs anyway."""
        if self._loss is not None:
            return
        cache = self._cache_setting
        loss = self._build_chain(cache) if self._implementation is None else None
        if loss is not None:  # the analytic products' pass gave it
            pass
        elif self._implementation != "double-backward" or cache is False or cache == "never":
            ev = evaluate(self.model, self.batches, check_finite=False, objective=self.objective)
            loss, self._units = ev.loss, ev.num_units
        else:
            loss = self._build_cache(cache)
        if not math.isfinite(loss):
            raise UserError(_NAN_LOSS)
        self._loss = loss

    def _build_cache(self, cache: bool | str) -> float:
        """Every batch's gradient graph (kept unless ``cache="auto"`` finds them over budget), and the loss."""
        nbytes = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal nbytes
            nbytes += t.numel() * t.element_size()
            return t

        graphs: list[tuple[Tensor, ...]] | None = []
        total, units = 0.0, 0
        with eval_mode(self.model), torch.enable_grad():
            for i, b in enumerate(self.batches):
                if graphs is None:  # over budget: the loss still needs its pass
                    with torch.no_grad():
                        losses = self.objective.losses(call(self.model, b.inputs), b)
                    total += float(losses.sum())
                    units += losses.shape[0]
                    continue
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = call(self.model, b.inputs)
                    if i == 0:  # labels against the outputs, once (the objective's checks)
                        self.objective.validate(out, b, self.batches)
                    losses = self.objective.losses(out, b)
                    loss = losses.sum()
                    graphs.append(self._gradient_graph(loss))
                total += float(loss.detach())
                units += losses.shape[0]
                # a graph per batch, each about the size of the first
                if (
                    cache == "auto"
                    and i == 0
                    and nbytes * len(self.batches) > _cache_budget(self.device)
                ):
                    graphs = None
        self._graphs = graphs
        if units == 0:
            raise UserError(f"the {self.objective.name} loss counted no units on this data")
        self._units = units
        return total / units

    def _build_chain(self, cache: bool | str) -> float | None:
        """The analytic products' plan and every batch's state (kept within the budget), and
        the loss; None (and the reason in ``fallback``) when the model is not a chain."""
        with eval_mode(self.model):
            plan = chain_hvp.plan(self.model, self.objective)
            reason = plan if isinstance(plan, str) else None
            states: list[chain_hvp.BatchState] | None = []
            total, units = 0.0, 0
            for i, b in enumerate(self.batches if reason is None else ()):
                if not isinstance(b.inputs, Tensor) or b.targets is None or b.mask is not None:
                    reason = "the batches are not (inputs, targets) tensor pairs"
                    break
                try:
                    state = chain_hvp.point(plan, b.inputs, b.targets)
                except (ValueError, RuntimeError, IndexError) as e:
                    reason = f"its hand-derived pass failed on this data ({e})"
                    break
                if i == 0:
                    self.objective.validate(state.outputs, b, self.batches)
                    if not chain_hvp.check_outputs(self.model, b.inputs, state):
                        reason = "its layer-by-layer pass does not reproduce the model's outputs"
                        break
                    # every batch's state about the size of the first
                    nbytes = chain_hvp.nbytes(state) * len(self.batches)
                    if not (
                        cache is True or (cache == "auto" and nbytes <= _cache_budget(self.device))
                    ):
                        states = None
                total += state.loss
                units += state.units
                if states is not None:
                    states.append(state)
        if reason is not None:
            if self.hvp == "analytic":
                raise UserError(
                    f"hvp='analytic' needs a chain of dense layers under a built-in loss: {reason}; "
                    "use hvp='auto' or 'double-backward'"
                )
            self._implementation, self._fallback = "double-backward", reason
            return None
        if units == 0:
            raise UserError(f"the {self.objective.name} loss counted no units on this data")
        self._implementation, self._plan, self._states, self._units = (
            "analytic",
            plan,
            states,
            units,
        )
        return total / units

    def _gradient_graph(self, loss: Tensor) -> tuple[Tensor, ...]:
        """The gradient of a batch's loss sum, with its graph."""
        g = torch.autograd.grad(loss, self._params, create_graph=True, allow_unused=True)
        # unused parameters (or ones whose gradient does not depend on theta) get a constant
        # zero that still takes part in the second backward
        return tuple(
            a if a is not None and a.requires_grad else (p * 0.0) for a, p in zip(g, self._params)
        )

    def _tangents(self, V: Tensor, batched: bool = False) -> list[Tensor]:
        """Parameter-shaped tangents from coordinate rows (fixed entries zero): ``shape`` for
        one row (unless ``batched``), ``(b, *shape)`` for several."""
        if V.shape[0] == 1 and not batched:
            return list(self.view.unflatten(V[0]).values())
        b, out = V.shape[0], []
        for s in self.view.slots:
            part = V[:, s.start : s.stop]
            if s.index is None:
                out.append(part.reshape(b, *s.shape))
            else:
                full = part.new_zeros(b, s.shape.numel())
                full[:, s.index.to(part.device)] = part
                out.append(full.reshape(b, *s.shape))
        return out

    def _flatten_rows(self, tensors: list[Tensor], b: int) -> Tensor:
        """Coordinate rows ``(b, n)`` from parameter-shaped tensors ``(b, *shape)``."""
        parts = []
        for s, t in zip(self.view.slots, tensors):
            flat = t.reshape(b, -1)
            parts.append(flat if s.index is None else flat[:, s.index.to(flat.device)])
        return torch.cat(parts, dim=1)

    def _products(self, V: Tensor) -> Tensor:
        if self._implementation == "analytic":
            return self._products_analytic(V)
        if self._implementation == "forward-over-reverse":
            return self._products_fwd_rev(V)
        if V.shape[0] > 1 and self._batching:
            try:
                return self._products_double_backward(V)
            except RuntimeError:
                self._batching = False
        if V.shape[0] > 1:
            return torch.cat([self._products_double_backward(v[None]) for v in V])
        return self._products_double_backward(V)

    def _products_double_backward(self, V: Tensor) -> Tensor:
        b = V.shape[0]
        tangents = self._tangents(V)
        total: list[Tensor | None] = [None] * len(tangents)
        # a kept graph was built in eval mode; only rebuilding needs the switch
        with eval_mode(self.model, self._graphs is None), torch.enable_grad():
            for i, batch in enumerate(self.batches):
                if self._graphs is not None:
                    g = self._graphs[i]
                else:
                    g = self._gradient_graph(self._loss_sum(batch))
                # one vector: a plain backward (vmap's overhead is not worth it for b = 1)
                h = torch.autograd.grad(
                    g,
                    self._params,
                    grad_outputs=tangents,
                    retain_graph=self._graphs is not None,
                    is_grads_batched=b > 1,
                    allow_unused=True,
                )
                total = [a if t is None else (t if a is None else t + a) for t, a in zip(total, h)]
        total = [torch.zeros_like(t) if a is None else a for a, t in zip(total, tangents)]
        if b == 1:
            return (self.view.flatten(total) / self._units)[None]
        return self._flatten_rows(total, b) / self._units

    def _products_analytic(self, V: Tensor) -> Tensor:
        b = V.shape[0]
        tangents = self._tangents(V, batched=True)
        T = {id(p): t for p, t in zip(self._params, tangents)}
        total: dict[int, Tensor] = {}
        with eval_mode(self.model, self._states is None):
            for i, batch in enumerate(self.batches):
                state = (
                    self._states[i]
                    if self._states is not None
                    else chain_hvp.point(self._plan, batch.inputs, batch.targets)
                )
                for key, h in chain_hvp.products(self._plan, state, T).items():
                    total[key] = h if key not in total else total[key] + h
        rows = [total.get(id(p), torch.zeros_like(t)) for p, t in zip(self._params, tangents)]
        return self._flatten_rows(rows, b) / self._units

    def _products_fwd_rev(self, V: Tensor) -> Tensor:
        from torch.func import functional_call, grad, jvp, vmap

        theta = self.view.get().detach()  # products are values, not part of a graph
        total = torch.zeros_like(V)
        with eval_mode(self.model):
            for batch in self.batches:
                args, kwargs = call_args(batch.inputs)

                def f(t, batch=batch, args=args, kwargs=kwargs):
                    params = self.view.functional(t)
                    out = functional_call(self.model, params, args, kwargs, strict=False)
                    return self.objective.loss_sum(out, batch)

                total += vmap(lambda v: jvp(grad(f), (theta,), (v,))[1])(V).detach()
        return total / self._units


def _cache_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return CACHE_BYTES_CPU
