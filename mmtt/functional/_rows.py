"""Picking and summing rows of a batch of token sets, the indexing steps every reduction repeats."""
import torch
from torch import Tensor


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i]]``: the rows of ``x: [B, N, C]`` named by ``index: [B, M]``, ``[B, M, C]``.

    Equal to ``x.gather(1, index[..., None].expand(-1, -1, C))``. One ``index_select`` over the
    batch flattened into rows reads each picked row once; ``gather`` with an index expanded over
    C computes an address per element, several times slower on CPU for token-sized rows.
    """
    batch, num_rows, channels = x.shape
    offset = torch.arange(batch, device=index.device)[:, None] * num_rows
    picked = x.reshape(-1, channels).index_select(0, (index + offset).flatten())
    return picked.view(batch, index.shape[1], channels)


def _add_rows(x: Tensor, index: Tensor, weight: Tensor, num_out: int) -> Tensor:
    batch, _, channels = x.shape
    out = x.new_zeros(batch * num_out, channels)
    offset = torch.arange(batch, device=x.device)[:, None] * num_out
    # One index_add_ per non-zero of a column over the flattened batch: on CPU this is faster
    # than scatter_add_ with an expanded index, and never forms a [B, k, N, C].
    for k in range(index.shape[1]):
        out.index_add_(0, (index[:, k] + offset).flatten(), (weight[:, k, :, None] * x).flatten(0, 1))
    return out.view(batch, num_out, channels)


def _add_rows_shape(x: Tensor, index: Tensor, weight: Tensor, num_out: int) -> Tensor:
    return x.new_empty(x.shape[0], num_out, x.shape[2])


def _add_rows_save(ctx, inputs, output) -> None:
    x, index, weight, _ = inputs
    ctx.save_for_backward(x, index, weight)


def _add_rows_backward(ctx, grad: Tensor):
    # out[b, index[b, k, j]] += weight[b, k, j] x[b, j]: each summand reads its output row back.
    x, index, weight = ctx.saved_tensors
    read = [gather_rows(grad, index[:, k]) for k in range(index.shape[1])]
    grad_x = sum(r * weight[:, k, :, None] for k, r in enumerate(read)) if ctx.needs_input_grad[0] else None
    grad_weight = torch.stack([(r * x).sum(-1) for r in read], dim=1) if ctx.needs_input_grad[2] else None
    return grad_x, None, grad_weight, None


# Under torch.compile the sum runs as one opaque operator, the same ATen index_add_ kernels as
# eager: inductor would generate a scalar atomic-add loop for it instead, 5-8x slower on CPU.
# (torch >= 2.4; eager never goes through the dispatcher's custom-op layer.)
_compiled_add_rows = None
if hasattr(torch.library, 'custom_op'):
    _compiled_add_rows = torch.library.custom_op('mmtt::add_rows', mutates_args=())(_add_rows)
    _compiled_add_rows.register_fake(_add_rows_shape)
    _compiled_add_rows.register_autograd(_add_rows_backward, setup_context=_add_rows_save)


def add_rows(x: Tensor, index: Tensor, weight: Tensor, num_out: int) -> Tensor:
    """``out[b, index[b, t, j]] += weight[b, t, j] x[b, j]`` from zeros: ``[B, num_out, C]``.

    ``W X`` for a W with ``k`` non-zeros per column (merging, Token Transforming's ``top_k``):
    ``x: [B, N, C]``, ``index`` (output rows) and ``weight`` (coefficients, ``x``'s dtype)
    ``[B, k, N]``.
    """
    if torch.jit.is_tracing():
        # ONNX's TorchScript exporter turns index_add_ into a ScatterND that drops duplicate
        # indices (many columns per row is the point of merging); scatter_add exports as
        # ScatterElements with reduction='add' (opset >= 16).
        out = x.new_zeros(x.shape[0], num_out, x.shape[2])
        for k in range(index.shape[1]):
            out = out.scatter_add(1, index[:, k, :, None].expand(-1, -1, x.shape[2]), weight[:, k, :, None] * x)
        return out
    if _compiled_add_rows is not None and torch.compiler.is_compiling():
        return _compiled_add_rows(x, index, weight, num_out)
    return _add_rows(x, index, weight, num_out)
