"""The metanetworks: models that read a network's trainable coordinates and predict a scalar.

Every model takes a batch of flat coordinate vectors ``x`` of shape ``(B, D)`` (the
:class:`~landscape.params.ParamView` order, already standardised per tensor) and returns
``(B,)`` predictions. ``layout`` gives each parameter tensor's range ``[start, stop)`` of
the ``D`` coordinates. Following the paper's metanetwork experiment (Lim et al. 2024, after
Unterthiner et al. 2020 and Eilertsen et al. 2020):

- ``linear``: ``w^T x + b``;
- ``mlp`` / ``mlp_perm``: ``D -> h -> h -> 1`` with ReLU (``h = 64``);
- ``statnn``: per tensor the mean, variance, min, max and 25/50/75% quantiles
  (:func:`landscape.metanet.tensor_statistics`, 7 per tensor, standardised), then
  ``7T -> h -> h -> 1`` (``h = 256``);
- ``deepsets``: every coordinate is a set element ``(x_j, t_j)`` (its value and its tensor
  ``t_j``): ``rho(mean_j phi(x_j, t_j))`` with ``phi(x, t) = relu(W2 relu(w1 x + e_t))``,
  ``e_t`` a learned embedding per tensor, ``rho`` an MLP (``h = 32``);
- ``dmc``: a 1-D CNN over the coordinate sequence as in Eilertsen et al. 2020: six blocks of
  conv (kernel 5) -> ReLU -> BatchNorm -> max-pool 2 with channels 2, 4, 8, 16, 32, 64
  (``h = 64``), then a DeepSets readout over positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

#: default hidden width of each metanet
HIDDEN = {"linear": 0, "mlp": 64, "mlp_perm": 64, "statnn": 256, "deepsets": 32, "dmc": 64}


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FlatLinear(nn.Module):
    """``w^T x + b`` on the flat coordinates."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x).squeeze(-1)


class FlatMLP(nn.Module):
    """``D -> h -> h -> 1`` with ReLU on the flat coordinates."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = _mlp([dim, hidden, hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class StatNN(nn.Module):
    """An MLP on precomputed per-tensor statistics (the input is already the feature vector)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.net = _mlp([dim, hidden, hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class DeepSets(nn.Module):
    """``rho(mean_j phi(x_j, t_j))`` over the coordinates, each tagged with its tensor."""

    def __init__(self, tensor_ids: Tensor, hidden: int = 32):
        super().__init__()
        self.register_buffer("tensor_ids", tensor_ids.long(), persistent=False)
        self.value = nn.Linear(1, hidden)
        self.embed = nn.Embedding(int(tensor_ids.max()) + 1, hidden)
        self.phi = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = _mlp([hidden, hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        h = self.value(x.unsqueeze(-1)) + self.embed(self.tensor_ids)  # (B, D, h)
        return self.rho(self.phi(h).mean(dim=1)).squeeze(-1)


class DMC(nn.Module):
    """1-D CNN over the coordinate sequence (Eilertsen et al. 2020), DeepSets readout."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        chans = [1] + [max(1, hidden // 2**k) for k in (5, 4, 3, 2, 1, 0)]
        blocks = []
        for a, b in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv1d(a, b, 5), nn.ReLU(), nn.BatchNorm1d(b), nn.MaxPool1d(2)]
        self.convs = nn.Sequential(*blocks)
        # each block maps length L to (L - 4) // 2: pad short inputs so six blocks fit
        self.min_length = 320
        self.pre = nn.Sequential(nn.Linear(chans[-1], hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.post = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] < self.min_length:
            x = nn.functional.pad(x, (0, self.min_length - x.shape[-1]))
        h = self.convs(x.unsqueeze(1)).transpose(1, 2)  # (B, positions, channels)
        return self.post(self.pre(h).mean(dim=1)).squeeze(-1)


def build_metanet(name: str, dim: int, tensor_ids: Tensor, hidden: int | None = None) -> nn.Module:
    """The metanet ``name`` for inputs of ``dim`` features (``tensor_ids``: tensor of each coordinate)."""
    h = hidden or HIDDEN[name]
    if name == "linear":
        return FlatLinear(dim)
    if name in ("mlp", "mlp_perm"):
        return FlatMLP(dim, h)
    if name == "statnn":
        return StatNN(dim, h)
    if name == "deepsets":
        return DeepSets(tensor_ids, h)
    if name == "dmc":
        return DMC(dim, h)
    raise KeyError(name)
