"""torch.fx tracing that computes every value on a sample batch as it goes.

Plain ``torch.fx`` tracing replaces tensors by proxies, so Python that needs a number (``B,
T, C = x.size()``, ``math.sqrt(k.size(-1))``, ``if x.shape[0] > 0``) fails. Here every proxy
also knows its value on the sample batch: sizes, shapes, devices and truth values are
concrete and the graph is specialised to that batch, which is all spec derivation needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

from .evaluation import eval_mode
from .permutation import named_tensors


class ConcreteProxy(fx.Proxy):
    """A proxy that knows its value on the sample batch: sizes, shapes, devices and truth
    values are concrete, so ``B, T, C = x.size()``, ``math.sqrt(k.size(-1))`` and
    shape-dependent ``if``s trace (the graph is specialised to the sample, which is all
    derivation needs)."""

    @property
    def value(self):
        return self.tracer.value(self.node)

    def size(self, dim=None):
        v = self.value
        return v.size() if dim is None else v.size(dim)

    @property
    def shape(self):
        return self.value.shape

    @property
    def ndim(self):
        return self.value.dim()

    def dim(self):
        return self.value.dim()

    @property
    def device(self):
        return self.value.device

    @property
    def dtype(self):
        return self.value.dtype

    def __len__(self):
        return len(self.value)

    def __bool__(self):
        return bool(self.value)

    def __index__(self):
        return int(self.value)

    def __int__(self):
        return int(self.value)

    def __float__(self):
        return float(self.value)

    def __iter__(self):
        return iter([self[i] for i in range(len(self.value))])


class ConcreteTracer(fx.Tracer):
    """fx tracing with the modules ``leaf(m)`` names as leaves, and every value computed on
    the sample batch as it is traced (see :class:`ConcreteProxy`).

    Leaf modules cannot run while fx has patched ``nn.Module``, so their outputs come from
    one plain forward pass beforehand, recorded per module in call order: tracing follows
    the same Python path, so the k-th traced call of a module is its k-th recorded call.
    """

    #: buffers read in ``forward`` become graph nodes, so that derived values (a slope times a
    #: distance matrix) keep their tie to the buffer
    proxy_buffer_attributes = True

    def __init__(self, model: nn.Module, x: Tensor, leaf: Callable[[nn.Module], bool]):
        super().__init__()
        self.leaf = leaf
        self.inputs, self.values, self.placeholders = [x], {}, 0
        self.recorded: dict[str, list] = {}
        self.tensors = named_tensors(model)
        hooks = [
            m.register_forward_hook(
                lambda mod, i, o, n=n: self.recorded.setdefault(n, []).append(o)
            )
            for n, m in model.named_modules()
            if n and self.is_leaf_module(m, n)
        ]
        try:
            with eval_mode(model), torch.no_grad():
                model(x)
        finally:
            for h in hooks:
                h.remove()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return self.leaf(m) or super().is_leaf_module(m, qualname)

    def value(self, node: fx.Node):
        if node not in self.values:  # parameters, buffers and constants fx lifted into the root
            target = str(node.target)
            if target in self.tensors:
                self.values[node] = self.tensors[target]
            else:  # read past fx's patched Module.__getattr__
                prefix, _, leaf = target.rpartition(".")
                owner = self.root.get_submodule(prefix) if prefix else self.root
                self.values[node] = vars(owner)[leaf]
        return self.values[node]

    def proxy(self, node: fx.Node) -> fx.Proxy:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self.value)
        if node.op == "placeholder":
            k, self.placeholders = self.placeholders, self.placeholders + 1
            v = self.inputs[k] if k < len(self.inputs) else (args[0] if args else None)
        elif node.op == "call_function":
            v = node.target(*args, **kwargs)
        elif node.op == "call_method":
            v = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif node.op == "call_module":
            calls = self.recorded.get(node.target)
            if not calls:
                raise RuntimeError(
                    f"{node.target} runs more often in tracing than in a forward pass"
                )
            v = calls.pop(0)
        elif node.op == "get_attr":
            v = self.value(node)
        else:
            return super().proxy(node)
        self.values[node] = v
        return ConcreteProxy(node, self)


def trace(model: nn.Module, x: Tensor, leaf: Callable[[nn.Module], bool]) -> fx.GraphModule:
    """The fx graph of ``model`` on ``x`` with ``leaf`` modules kept whole; constants fx
    attaches to the model are removed again."""
    before = set(vars(model))
    try:
        with eval_mode(model), torch.no_grad():
            graph = ConcreteTracer(model, x, leaf).trace(model)
        return fx.GraphModule(model, graph)
    finally:
        for name in set(vars(model)) - before:
            if name.startswith("_tensor_constant"):
                delattr(model, name)
