"""A simulated CUDA device for CPU-only test machines: device-placement bugs without a GPU.

`fake_cuda(lm)` marks the model's parameters and buffers as living on ``cuda:0`` and,
while the context is open, follows every torch call (a `TorchFunctionMode`): tensors
made from marked tensors, or asked for with ``device="cuda"``, are marked too; ``.cpu()``
and ``.to("cpu")`` give unmarked ones. Where real CUDA raises, so does this:

- an operation mixing marked and unmarked tensors (a CPU tensor of 0 dimensions, a
  scalar, is allowed, as CUDA allows it), except ``copy_`` and slice assignment, which
  copy across devices;
- indexing an unmarked tensor with a marked index (a CPU index into a CUDA tensor is
  allowed), and assigning a tensor of the other device through an index tensor;
- ``.numpy()`` and ``np.asarray`` of a marked tensor.

Everything still computes on the CPU, so results can be compared with a CPU run. The
marks are what the code would see on a GPU: ``tensor.device`` and ``lm.device`` answer
``cuda:0``. What it cannot see: CUDA kernels' own numerics, streams and memory. Load
models before entering the context: Hugging Face's loading does not survive the
simulation (its rotary buffers come out uninitialised).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda", 0)
_MARK = "_lookuplens_fake_cuda"


def is_marked(t: object) -> bool:
    return isinstance(t, torch.Tensor) and bool(getattr(t, _MARK, False))


def _mark(t: torch.Tensor, on: bool = True) -> None:
    setattr(t, _MARK, on)


def _is_cuda(d: object) -> bool | None:
    """True for a CUDA device spec, False for a CPU one, None for anything else."""
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        if d.startswith("cuda"):
            return True
        if d == "cpu":
            return False
    return None


def _tensors(x: object, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, list | tuple):
        for v in x:
            _tensors(v, out)
    elif isinstance(x, dict):
        for v in x.values():
            _tensors(v, out)
    return out


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object over the same data (so that marking it leaves `t` alone)."""
    with torch._C.DisableTorchFunction():
        return t.view_as(t)


class FakeCudaError(RuntimeError):
    """What CUDA would have raised."""


class FakeCudaMode(TorchFunctionMode):
    """The mode `fake_cuda` enters (see the module docstring)."""

    _GET = {torch.Tensor.__getitem__}
    _SET = {torch.Tensor.__setitem__}
    _CROSS_COPY = {torch.Tensor.copy_}
    _SHAPE_OF = {torch.Tensor.expand_as, torch.Tensor.view_as, torch.Tensor.reshape_as}
    _NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        if func == torch.Tensor.device.__get__:
            return CUDA if is_marked(args[0]) else func(*args)
        if func == torch.Tensor.is_cuda.__get__:
            return is_marked(args[0])
        if func is torch.Tensor.get_device:
            return 0 if is_marked(args[0]) else func(*args)
        if func in self._NUMPY:
            if is_marked(args[0]) and not kwargs.get("force"):
                raise TypeError(
                    "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to "
                    "copy the tensor to host memory first. (fake CUDA)"
                )
            return func(*args, **kwargs)
        if func is torch.Tensor.cpu:
            return self._placed(func(*args, **kwargs), args[0], False)
        if func is torch.Tensor.cuda:
            return self._placed(args[0], args[0], True)
        if func is torch.Tensor.to:
            target = None
            rest = []
            for a in args[1:]:
                c = _is_cuda(a)
                if c is not None:
                    target, a = c, "cpu"
                elif isinstance(a, torch.Tensor):
                    target, a = is_marked(a), a.dtype
                rest.append(a)
            c = _is_cuda(kwargs.get("device"))
            if c is not None:
                target, kwargs["device"] = c, "cpu"
            with torch._C.DisableTorchFunction():
                out = args[0].to(*rest, **kwargs)
            return self._placed(out, args[0], is_marked(args[0]) if target is None else target)
        # factories: device="cuda" runs on the CPU, marked
        dev = kwargs.get("device")
        wants = _is_cuda(dev)
        if wants is not None:
            kwargs["device"] = "cpu"
        ins = _tensors(args, []) + _tensors(kwargs, [])
        if func in self._GET:
            self._check_index(args[0], args[1], name)
            marked = is_marked(args[0])
        elif func in self._SET:
            self._check_index(args[0], args[1], name)
            value = args[2]
            if (
                isinstance(value, torch.Tensor)
                and value.dim() > 0
                and is_marked(value) != is_marked(args[0])
                and _tensors(args[1], [])
            ):
                raise FakeCudaError(
                    "index_put_: values on another device than the indexed tensor "
                    f"({'cuda' if is_marked(value) else 'cpu'} into "
                    f"{'cuda' if is_marked(args[0]) else 'cpu'}) (fake CUDA)"
                )
            marked = is_marked(args[0])
        elif func in self._CROSS_COPY or func in self._SHAPE_OF:
            marked = is_marked(args[0])
        elif func is torch.Tensor.type_as:
            marked = is_marked(args[1])
        else:
            big = [t for t in ins if t.dim() > 0 or is_marked(t)]
            on = {is_marked(t) for t in big}
            if len(on) > 1:
                raise FakeCudaError(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, cuda:0 and cpu! (in {name}, fake CUDA)"
                )
            marked = bool(on and on.pop()) if wants is None else wants
        out = func(*args, **kwargs)
        if marked:
            for t in _tensors(out, []):
                _mark(t)
        return out

    @staticmethod
    def _placed(out: torch.Tensor, src: torch.Tensor, cuda: bool) -> torch.Tensor:
        if out is src and is_marked(src) != cuda:
            out = _fresh(src)
        _mark(out, cuda)
        return out

    @staticmethod
    def _check_index(t: torch.Tensor, index: object, name: str) -> None:
        if not is_marked(t) and any(is_marked(i) for i in _tensors(index, [])):
            raise FakeCudaError(
                "indices should be either on cpu or on the same device as the indexed tensor "
                f"(cpu) (in {name}, fake CUDA)"
            )


def mark(model: torch.nn.Module) -> None:
    """Mark `model`'s parameters and buffers as on ``cuda:0`` (as ``model.to("cuda")``)."""
    for t in [*model.parameters(), *model.buffers()]:
        _mark(t)


@contextlib.contextmanager
def fake_cuda(*models: torch.nn.Module) -> Iterator[None]:
    """Mark `models` as on ``cuda:0`` and check every torch call made inside the context
    (see the module docstring); their marks are removed after."""
    for m in models:
        mark(m)
    try:
        with FakeCudaMode():
            yield
    finally:
        for m in models:
            for t in [*m.parameters(), *m.buffers()]:
                _mark(t, False)
