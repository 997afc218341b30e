"""Directions in parameter space for 1-D and 2-D loss surfaces.

A direction is a vector of *coordinates* of :class:`landscape.params.ParamView`: fixed
W-Asym entries are not coordinates, so no direction can ever move them. Sources:

- :func:`random_directions`: Gaussian vectors normalised as in Li et al. 2018 ("Visualizing
  the Loss Landscape of Neural Nets");
- :func:`plane_directions`: the plane through three models A, B, C (origin at A);
- :func:`line_direction`: the line from model A to model B;
- :func:`directions_from` / :func:`hessian_directions`: user tensors or Hessian eigenvectors;
- :func:`landscape.trajectory.pca_directions`: the top principal components of a training
  trajectory around the final weights (Li et al. 2018), with the trajectory projected onto them.

Normalisation of a direction ``d`` against the model's *effective* parameter tensors
``theta`` (for a W-Asym layer ``W * M + F``, fixed values included), per parameter tensor:

- ``filter``: every output filter / neuron ``i`` (slice ``[i]`` along dim 0) becomes
  ``d[i] * ||theta[i]|| / ||d[i]||``; a 1-D or 0-D tensor is one filter;
- ``layer``: ``d * ||theta|| / ||d||``;
- ``weight``: ``d * theta`` (elementwise, Li et al.'s ``weight`` option);
- ``none``: ``d`` unchanged.

Norms are Euclidean, taken after ``d`` is zeroed at fixed entries; ``1e-10`` is added to
``||d||`` as in Li et al. Parameters matched by ``ignore`` get a zero direction:
``"bias"`` matches every parameter named ``*.bias``, ``"norm"`` every parameter of a
normalisation layer (BatchNorm, LayerNorm, GroupNorm, or any module whose class name
contains "Norm"); any other entry is a glob pattern on parameter names.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UserError
from .params import ParamView, check_same_family, fixed_entry_mask, owner

NORMALIZATIONS = ("filter", "layer", "weight", "none")
_EPS = 1e-10


@dataclass(frozen=True, eq=False)
class Directions:
    """Directions as rows of ``vectors`` (shape ``(count, n)``, CPU float32): coordinates of ``ParamView(model)``.

    ``names`` are the grid axis names (one per direction), ``params`` the parameter names of
    the view the coordinates belong to, ``landmarks`` named points with their grid
    coordinates (``(("A", (0.0, 0.0)), ("B", (1.0, 0.0)), ...)``) for planes and lines.
    PCA directions also carry the ``explained_variance`` ratio of each direction and the
    ``trajectory``: the grid coordinates ``(checkpoints, count)`` of the checkpoints they were
    made from (named by ``trajectory_labels``).
    """

    vectors: Tensor
    names: tuple[str, ...]
    normalization: str = "none"
    seed: int | None = None
    source: str = "user"
    params: tuple[str, ...] = ()
    landmarks: tuple[tuple[str, tuple[float, ...]], ...] = ()
    ignore: tuple[str, ...] = ()
    explained_variance: tuple[float, ...] = ()
    trajectory: np.ndarray | None = None
    trajectory_labels: tuple[str, ...] = ()

    def __post_init__(self):
        if self.vectors.dim() != 2:
            raise UserError(
                f"directions need a (count, n) tensor, got shape {tuple(self.vectors.shape)}"
            )
        if len(self.names) != self.vectors.shape[0]:
            raise UserError(f"{self.vectors.shape[0]} directions but {len(self.names)} axis names")

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    def __len__(self) -> int:
        return self.count

    @property
    def numel(self) -> int:
        return int(self.vectors.shape[1])

    def fingerprint(self) -> str:
        """SHA-256 of the vectors' bytes (to check that a resumed grid uses the same directions)."""
        return self._sha256

    @cached_property
    def _sha256(self) -> str:
        return hashlib.sha256(
            self.vectors.detach().cpu().contiguous().numpy().tobytes()
        ).hexdigest()

    def check(self, view: ParamView) -> None:
        """Raise :class:`UserError` unless these directions are coordinates of ``view``."""
        if self.numel != view.numel or (self.params and tuple(self.params) != tuple(view.names)):
            raise UserError(
                f"the directions have {self.numel} coordinates over {len(self.params)} parameters, the model "
                f"{view.numel} over {len(view.names)}: make the directions from this model (same architecture)"
            )

    def unflatten(self, model: nn.Module, index: int = 0) -> dict[str, Tensor]:
        """Direction ``index`` as parameter-shaped tensors (zero at fixed entries)."""
        view = ParamView(model)
        self.check(view)
        return view.unflatten(self.vectors[index].to(view.device, view.dtype))

    def settings(self) -> dict[str, Any]:
        """What a results record stores about these directions (the vectors go in a dataset)."""
        return {
            "names": list(self.names),
            "normalization": self.normalization,
            "seed": self.seed,
            "source": self.source,
            "ignore": list(self.ignore),
            "landmarks": {n: list(c) for n, c in self.landmarks},
            "sha256": self.fingerprint(),
            **(
                {"explained_variance": list(self.explained_variance)}
                if self.explained_variance
                else {}
            ),
        }


# ----------------------------------------------------------------------------- helpers
def _is_norm(module: nn.Module) -> bool:
    kinds = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm) + (
        (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
    )
    return isinstance(module, kinds) or "norm" in type(module).__name__.lower()


def ignored(model: nn.Module, name: str, ignore: Iterable[str]) -> bool:
    """True when parameter ``name`` is matched by ``ignore`` (see the module docstring)."""
    module, leaf = owner(model, name)
    for pattern in ignore:
        if pattern == "bias" and leaf == "bias":
            return True
        if pattern == "norm" and _is_norm(module):
            return True
        if pattern not in ("bias", "norm") and fnmatch.fnmatchcase(name, pattern):
            return True
    return False


@torch.no_grad()
def effective_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The tensors the forward pass uses, by parameter name: ``effective_weight()`` where a
    layer has one (W-Asym: ``W * M + F``); ``W`` at trainable entries and the ``fixed`` buffer
    elsewhere where a layer has the mask of :func:`landscape.params.fixed_entry_mask` and a
    ``fixed`` buffer; else the parameter itself."""
    out = {}
    for name, p in model.named_parameters():
        module, leaf = owner(model, name)
        t = p.detach()
        if leaf == "weight" and callable(getattr(module, "effective_weight", None)):
            t = module.effective_weight().detach()
        elif (
            isinstance(getattr(module, "fixed", None), Tensor)
            and (mask := fixed_entry_mask(model, name, p)) is not None
        ):
            t = torch.where(mask, t, module.fixed)
        out[name] = t
    return out


def normalize_tensor(d: Tensor, theta: Tensor, method: str) -> Tensor:
    """One parameter tensor's direction normalised against ``theta`` (see the module docstring)."""
    if method == "none":
        return d
    if method == "weight":
        return d * theta
    if method == "layer" or d.dim() <= 1:
        return d * (theta.norm() / (d.norm() + _EPS))
    if method == "filter":
        dims = tuple(range(1, d.dim()))
        vnorm = torch.linalg.vector_norm
        scale = vnorm(theta, dim=dims, keepdim=True) / (vnorm(d, dim=dims, keepdim=True) + _EPS)
        return d * scale
    raise UserError(f"unknown normalization {method!r}: use one of {', '.join(NORMALIZATIONS)}")


def normalize(
    model: nn.Module, vector: Tensor, method: str = "filter", ignore: Sequence[str] = ()
) -> Tensor:
    """A coordinate vector of ``ParamView(model)`` normalised per parameter tensor; ignored parameters zeroed."""
    if method not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {method!r}: use one of {', '.join(NORMALIZATIONS)}")
    view = ParamView(model)
    full = view.unflatten(vector.to(view.device, torch.float32))
    eff = effective_tensors(model)
    out = {}
    for name, d in full.items():
        if ignored(model, name, ignore):
            out[name] = torch.zeros_like(d)
        else:
            # d is already zero at fixed entries, so filter norms count trainable entries only
            out[name] = normalize_tensor(d, eff[name].to(d.dtype), method)
    return view.flatten(out)


def _make(
    model: nn.Module, vectors: Sequence[Tensor], names: Sequence[str], **meta: Any
) -> Directions:
    view = ParamView(model)
    stacked = torch.stack([v.detach().to("cpu", torch.float32) for v in vectors])
    if not torch.isfinite(stacked).all():
        raise UserError(
            "a direction contains NaN or Inf: check the models or tensors it was made from"
        )
    return Directions(stacked, tuple(names), params=tuple(view.names), **meta)


def _axis_names(count: int) -> tuple[str, ...]:
    return ("x", "y", "z")[:count] if count <= 3 else tuple(f"d{i}" for i in range(count))


# ----------------------------------------------------------------------------- sources
def random_directions(
    model: nn.Module,
    *,
    count: int = 2,
    normalization: str = "filter",
    ignore: Sequence[str] = ("bias", "norm"),
    seed: int = 0,
) -> Directions:
    """``count`` Gaussian directions ``d ~ N(0, I)`` over the trainable coordinates, normalised.

    Draws come from ``torch.Generator().manual_seed(seed)``, one full-shaped tensor per
    parameter in ``named_parameters`` order (direction 0 first), so models of the same
    architecture (standard or W-Asym) get the same draws at the same entries. Entries fixed
    by a W-Asym mask are dropped (they are not coordinates), then each direction is
    normalised by ``normalization`` (``filter``, ``layer``, ``weight`` or ``none``, see the
    module docstring) with parameters matched by ``ignore`` set to zero.
    """
    if count < 1:
        raise UserError(f"count must be at least 1, got {count}")
    view = ParamView(model)
    gen = torch.Generator().manual_seed(int(seed))
    vectors = []
    for _ in range(count):
        raw = view.flatten(
            [torch.randn(s.shape, generator=gen).to(view.device) for s in view.slots]
        )
        vectors.append(normalize(model, raw, normalization, ignore))
    return _make(
        model,
        vectors,
        _axis_names(count),
        normalization=normalization,
        seed=int(seed),
        source="random",
        ignore=tuple(ignore),
    )


def _coords(model: nn.Module) -> Tensor:
    return ParamView(model).get().to("cpu", torch.float64)


def line_direction(a: nn.Module, b: nn.Module) -> Directions:
    """The direction ``theta_B - theta_A``: A sits at coordinate 0, B at 1 (origin of the surface: A)."""
    check_same_family(a, b, "the models A and B")
    d = _coords(b) - _coords(a)
    if not bool(d.abs().max() > 0):
        raise UserError("models A and B are identical: a line between them has no direction")
    return _make(a, [d], ("x",), source="line", landmarks=(("A", (0.0,)), ("B", (1.0,))))


def plane_directions(
    a: nn.Module, b: nn.Module, c: nn.Module, *, orthogonal: bool = True
) -> Directions:
    """The plane through models A, B, C with its origin at A (evaluate the surface with ``model=A``).

    With ``u = theta_B - theta_A`` and ``v = theta_C - theta_A``: ``d_x = u`` and, when
    ``orthogonal`` (Garipov et al. 2018), ``d_y = v_perp * ||u|| / ||v_perp||`` with
    ``v_perp = v - (u.v / u.u) u``, so both axes have the same length per unit and the
    picture is not sheared. Grid coordinates: A = (0, 0), B = (1, 0),
    C = (u.v / u.u, ||v_perp|| / ||u||). With ``orthogonal=False``, ``d_y = v`` and
    C = (0, 1). The coordinates are in ``Directions.landmarks``.
    """
    check_same_family(a, b, "the models A and B")
    check_same_family(a, c, "the models A and C")
    ta = _coords(a)
    u, v = _coords(b) - ta, _coords(c) - ta
    uu = float(u @ u)
    if uu == 0.0:
        raise UserError("models A and B are identical: they do not span a plane with C")
    if not orthogonal:
        if float(v @ v) == 0.0:
            raise UserError("models A and C are identical: they do not span a plane with B")
        return _make(
            a,
            [u, v],
            ("x", "y"),
            source="plane",
            landmarks=(("A", (0.0, 0.0)), ("B", (1.0, 0.0)), ("C", (0.0, 1.0))),
        )
    cx = float(u @ v) / uu
    v_perp = v - cx * u
    nv = float(v_perp.norm())
    if nv <= 1e-9 * max(1.0, float(v.norm())):
        raise UserError("models A, B and C lie on one line: they do not span a plane")
    nu = uu**0.5
    d_y = v_perp * (nu / nv)
    return _make(
        a,
        [u, d_y],
        ("x", "y"),
        source="plane",
        landmarks=(("A", (0.0, 0.0)), ("B", (1.0, 0.0)), ("C", (cx, nv / nu))),
    )


def _as_vector(view: ParamView, v: Any, i: int) -> Tensor:
    if isinstance(v, dict):
        missing = [s.name for s in view.slots if s.name not in v]
        full = {
            s.name: torch.as_tensor(v[s.name]) if s.name in v else torch.zeros(s.shape)
            for s in view.slots
        }
        if len(missing) == len(view.slots):
            raise UserError(
                f"direction {i}: none of its tensors is named like a parameter of the model"
            )
        for s in view.slots:
            if tuple(full[s.name].shape) != tuple(s.shape):
                raise UserError(
                    f"direction {i}: tensor {s.name} has shape {tuple(full[s.name].shape)}, the parameter {tuple(s.shape)}"
                )
        return view.flatten({n: t.to(view.device, torch.float32) for n, t in full.items()})
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).reshape(-1)
    if t.numel() != view.numel:
        raise UserError(
            f"direction {i} has {t.numel()} entries, the model has {view.numel} trainable coordinates"
        )
    return t.to(view.device, torch.float32)


def _rows(vectors: Tensor | np.ndarray, numel: int) -> list[Tensor]:
    """Direction vectors from a ``(count, n)`` (or ``(n, count)``, columns as vectors) tensor or array, or one vector."""
    arr = torch.as_tensor(vectors)
    if arr.dim() == 1:
        arr = arr[None]
    if arr.dim() == 2 and arr.shape[1] != numel and arr.shape[0] == numel:
        arr = arr.T
    return list(arr)


def directions_from(
    model: nn.Module,
    vectors: Any,
    *,
    normalization: str = "none",
    ignore: Sequence[str] = (),
    names: Sequence[str] | None = None,
    source: str = "user",
) -> Directions:
    """Directions from user tensors: a ``(count, n)`` tensor or array of coordinates, or a list
    of coordinate vectors or of parameter-shaped dicts ``{name: tensor}`` (missing names are
    zero, fixed entries dropped through the flat view). ``normalization`` and ``ignore`` as in
    :func:`random_directions` (default: used as given)."""
    view = ParamView(model)
    if isinstance(vectors, (Tensor, np.ndarray)):
        vectors = _rows(vectors, view.numel)
    elif isinstance(vectors, dict):
        vectors = [vectors]
    vecs = [_as_vector(view, v, i) for i, v in enumerate(vectors)]
    if not vecs:
        raise UserError("no directions given")
    if normalization != "none" or ignore:
        vecs = [normalize(model, v, normalization, ignore) for v in vecs]
    return _make(
        model,
        vecs,
        tuple(names) if names else _axis_names(len(vecs)),
        normalization=normalization,
        source=source,
        ignore=tuple(ignore),
    )


def hessian_directions(
    model: nn.Module,
    eigenvectors: Any,
    *,
    count: int = 2,
    normalization: str = "none",
    ignore: Sequence[str] = (),
) -> Directions:
    """The first ``count`` Hessian eigenvectors as directions (axes ``v1``, ``v2``, ...).

    ``eigenvectors``: a result with an ``eigenvectors`` attribute (the parameter-shaped dicts
    of :func:`landscape.hessian_eigenvalues`, or the ``(n, k)`` columns of
    :func:`landscape.lanczos.lanczos_eigen`), an ``(n, k)`` tensor whose columns are
    eigenvectors (``(k, n)`` rows are taken too), or a list of coordinate vectors or
    parameter-shaped dicts.
    """
    ev = getattr(eigenvectors, "eigenvectors", eigenvectors)
    ev = (_rows(ev, ParamView(model).numel) if isinstance(ev, (Tensor, np.ndarray)) else list(ev))[
        :count
    ]
    if len(ev) < count:
        raise UserError(f"asked for {count} Hessian directions, got {len(ev)} eigenvectors")
    return directions_from(
        model,
        ev,
        normalization=normalization,
        ignore=ignore,
        names=[f"v{i + 1}" for i in range(count)],
        source="hessian",
    )
