"""Directions from a training trajectory: its principal components around the final weights.

Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets", Section 7) explain why
random directions miss the path that training took (in high dimensions they are nearly
orthogonal to it) and plot the loss on the plane of the trajectory's top two principal
components instead, with the trajectory projected onto it. :func:`pca_directions` makes those
directions over the trainable coordinates of :class:`~landscape.params.ParamView` (fixed
W-Asym entries are not coordinates) and returns them as :class:`~landscape.directions.Directions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .directions import Directions, _axis_names, _make
from .errors import UserError
from .params import ParamView, check_same_family, fixed_buffers


def _trajectory_coords(view: ParamView, final: nn.Module, point: Any, i: int) -> Tensor:
    """Coordinates (float64, CPU) of one trajectory checkpoint: a model of ``final``'s family or a
    state dict holding every trainable parameter (fixed entries are not coordinates)."""
    if isinstance(point, nn.Module):
        check_same_family(final, point, f"trajectory checkpoint {i} and the final model")
        return ParamView(point).get().to("cpu", torch.float64)
    if not isinstance(point, dict):
        raise UserError(
            f"trajectory checkpoint {i}: expected a model or a state dict, got {type(point).__name__}"
        )
    missing = [s.name for s in view.slots if s.name not in point]
    if missing:
        raise UserError(
            f"trajectory checkpoint {i}: no tensor {missing[0]} (of {len(missing)} missing): "
            "not a state dict of this architecture"
        )
    for s in view.slots:
        if tuple(point[s.name].shape) != tuple(s.shape):
            raise UserError(
                f"trajectory checkpoint {i}: {s.name} has shape {tuple(point[s.name].shape)}, "
                f"the model {tuple(s.shape)}"
            )
    for name, b in fixed_buffers(final).items():  # one family: the same masks and fixed values
        if name in point and not torch.equal(point[name].cpu(), b.cpu()):
            raise UserError(
                f"trajectory checkpoint {i}: fixed buffer {name} differs from the final model's: "
                "not one network family"
            )
    return view.flatten(
        {s.name: point[s.name].detach().to("cpu", torch.float64) for s in view.slots}
    )


def pca_directions(
    final: nn.Module,
    trajectory: Iterable[nn.Module | dict[str, Tensor]],
    *,
    count: int = 2,
    center: bool = True,
    labels: Sequence[str] | None = None,
) -> Directions:
    """The top ``count`` principal components of a training trajectory around ``final``
    (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", Section 7).

    With ``theta_f`` the final coordinates and ``theta_1..theta_T`` those of the trajectory's
    checkpoints (models of ``final``'s family or state dicts, in training order; the final one
    may be among them), the rows of ``M`` are ``m_t = theta_t - theta_f`` over the trainable
    coordinates of ``ParamView(final)``. ``center`` subtracts the column means (PCA proper, as
    Li et al.'s scikit-learn PCA does): ``M_c = M - mean_t(m_t)``; ``M_c = U S V^T`` (computed
    from the eigenvectors of ``M_c M_c^T``). The
    directions are the first ``count`` rows of ``V^T`` (unit vectors; the sign makes each
    direction's largest entry positive), the explained variance ratios ``S_k^2 / sum_j S_j^2``,
    and the trajectory's grid coordinates the least-squares solution ``c_t`` of
    ``[d_1 ... d_count] c_t = m_t`` (the projection onto the plane; ``final`` at the origin).

    Returns :class:`Directions` (axes ``x``, ``y``; ``source="pca"``) with
    ``explained_variance`` and ``trajectory`` (``(T, count)``) filled in; evaluate the surface
    around ``final``.
    """
    view = ParamView(final)
    theta_f = view.get().to("cpu", torch.float64)
    rows = [_trajectory_coords(view, final, p, i) - theta_f for i, p in enumerate(trajectory)]
    if count < 1:
        raise UserError(f"count must be at least 1, got {count}")
    if len(rows) < count + (1 if center else 0):
        raise UserError(
            f"{count} principal directions need at least {count + int(center)} trajectory "
            f"checkpoints, got {len(rows)}: save more checkpoints during training"
        )
    if labels is not None and len(labels) != len(rows):
        raise UserError(f"{len(labels)} labels for {len(rows)} trajectory checkpoints")
    M = torch.stack(rows)
    Mc = M - M.mean(dim=0, keepdim=True) if center else M
    # the SVD through the T x T Gram matrix Mc Mc^T = U S^2 U^T (T checkpoints << n
    # coordinates: ~50x faster than an SVD of the wide matrix); then V^T = S^-1 U^T Mc
    power, U = torch.linalg.eigh(Mc @ Mc.T)
    power, U = power.flip(0).clamp_min(0), U.flip(1)
    total = float((Mc * Mc).sum())
    rank = int((power > 1e-10 * power[0]).sum()) if total > 0 else 0
    if rank < count:
        raise UserError(
            f"the trajectory spans fewer than {count} directions (its checkpoints lie on a "
            f"{rank}-dimensional set): save more, different checkpoints"
        )
    D = (U[:, :count].T @ Mc) / power[:count].sqrt()[:, None]
    flip = D.gather(1, D.abs().argmax(dim=1, keepdim=True)).sign()
    D = D * flip
    # least squares D^T c_t = m_t by the normal equations (D D^T = I up to rounding)
    coords = torch.linalg.solve(D @ D.T, D @ M.T).T  # (T, count)
    return _make(
        final,
        list(D),
        _axis_names(count),
        source="pca",
        explained_variance=tuple(float(r) / total for r in power[:count]),
        trajectory=coords.numpy(),
        trajectory_labels=tuple(labels) if labels is not None else (),
    )
