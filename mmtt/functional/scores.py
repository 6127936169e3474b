"""Informative-token scores (eq. 2) and attention that yields them without an N x N tensor."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_distinct_stride, check_score_stride, check_tensor

# Elements of one [B, heads, rows, N] logits block in attention_with_scores (4 MiB in float32):
# blocks that stay in cache measured fastest on CPU (ViT-S at 1025 and ViT-L at 1601 tokens).
_CHUNK_ELEMENTS = 1 << 20


def _block_rows(batch, heads: int, n: int, num_rows: int) -> int:
    """Query rows per block of about ``_CHUNK_ELEMENTS`` logits.

    Tensors are sized from ``q.shape`` itself, so the batch stays dynamic in a trace (ONNX
    export), which fixes only this blocking; any blocking gives the same output. Under
    ``torch.export`` a dynamic batch is a ``SymInt`` that ``int()`` would specialise: the
    rows then form one block.
    """
    if isinstance(batch, torch.SymInt):
        return max(1, num_rows)
    # Clamped to the rows there are: when one block holds them all, a compiled graph guards
    # on that inequality, not on the batch size, so another batch size does not recompile.
    return max(1, min(num_rows, _CHUNK_ELEMENTS // max(1, int(batch) * heads * n)))


def informative_scores(attn: Tensor) -> Tensor:
    """Eq. 2: ``H_j = sum_i A_ij``, averaged over heads.

    Args:
        attn: attention probabilities, ``[B, heads, N, N]`` (rows sum to 1).

    Returns:
        ``[B, N]``: how much attention each token receives from all tokens.
    """
    check_tensor('attn', attn, 4)
    if attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f'attn must be square in its last two dims, got shape {tuple(attn.shape)}')
    return attn.sum(dim=2).mean(dim=1)


def class_token_scores(attn: Tensor) -> Tensor:
    """Attention from the class token (row 0) to every token, averaged over heads: ``[B, N]``.

    The selection criterion of EViT and of Table 8's "class token attention" row.
    """
    check_tensor('attn', attn, 4)
    return attn[:, :, 0].mean(dim=1)


def attention_with_scores(q: Tensor, k: Tensor, v: Tensor, attn_bias: Optional[Tensor] = None,
                          chunk_rows: Optional[int] = None,
                          score_stride: int = 1) -> Tuple[Tensor, Tensor, Tensor]:
    """Softmax attention that also returns the informative and the class-token scores.

    Rows of the attention map are computed in blocks, so no ``[B, heads, N, N]`` tensor is
    kept: each block is used for its output rows and its contribution to the column sums,
    then freed. The softmax runs in float32 at least, so float16/bfloat16 inputs are safe.

    Args:
        q, k, v: ``[B, heads, N, d]``.
        attn_bias: additive logits bias broadcastable to ``[B, heads, N, N]``, e.g. ``log s``
            as ``[B, 1, 1, N]`` (eq. 7).
        chunk_rows: query rows per block; by default about 2**20 logits per block.
        score_stride: 1 (the paper's eq. 2): every query row. An int s > 1, an option beyond
            the paper: the output comes from ``F.scaled_dot_product_attention`` (the fused
            kernel) and the column sums from every s-th query row only (row 0, the class
            token, included), rescaled by ``N / rows``: see :func:`sampled_attention_scores`.

    Returns:
        ``(out [B, heads, N, d], informative_scores [B, N], class_token_scores [B, N])``,
        equal to ``A @ v``, :func:`informative_scores` and :func:`class_token_scores` of the
        full attention map ``A`` (with ``score_stride`` > 1 the informative scores are the
        strided estimate).
    """
    check_tensor('q', q, 4)
    check_tensor('k', k, 4, q.shape)
    check_tensor('v', v, 4, q.shape[:3])
    check_score_stride(score_stride)
    if score_stride > 1:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return (out, *sampled_attention_scores(q, k, attn_bias, score_stride, chunk_rows))
    heads, n, d = (int(v) for v in q.shape[1:])
    rows = chunk_rows or _block_rows(q.shape[0], heads, n, n)
    work = torch.promote_types(q.dtype, torch.float32)
    q_scaled, k_t = q * d ** -0.5, k.transpose(-2, -1)
    outs = []
    col_sums = q.new_zeros(q.shape[0], heads, 1, n, dtype=work)
    for start in range(0, n, rows):
        logits = (q_scaled[:, :, start:start + rows] @ k_t).to(work)
        if attn_bias is not None:
            bias = attn_bias if attn_bias.shape[-2] == 1 else attn_bias[..., start:start + rows, :]
            logits = logits + bias.to(work)
        # Unnormalised softmax: A = E / z row-wise, so A V = (E V) / z and the column sums of
        # A are (1 / z)^T E. Normalising E itself would cost another pass over the block.
        exps = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        z = exps.sum(dim=-1, keepdim=True)
        if start == 0:
            cls_scores = (exps[:, :, 0] / z[:, :, 0]).mean(dim=1)
        col_sums += z.reciprocal().transpose(-2, -1) @ exps
        outs.append((exps.to(v.dtype) @ v) / z.to(v.dtype))
    return torch.cat(outs, dim=2), col_sums[:, :, 0].mean(dim=1), cls_scores


def sampled_attention_scores(q: Tensor, k: Tensor, attn_bias: Optional[Tensor] = None,
                             stride: int = 1, chunk_rows: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Eq. 2 from every ``stride``-th query row, and the class-token scores, without the output.

    ``H_j ~ (N / R) sum_{i in rows} A_ij``, averaged over heads, where ``rows = 0, stride,
    2 stride, ...`` (R of them). On a patch grid the strided rows are spread over the whole
    image, so the ranking of eq. 2 survives (``docs/benchmarks.md`` gives the measured fidelity); the
    work is ``1 / stride`` of the attention map's. ``stride=1`` gives eq. 2 exactly.

    Args:
        q, k: ``[B, heads, N, d]``.
        attn_bias: as :func:`attention_with_scores`.
        stride: step between the query rows used, >= 1.
        chunk_rows: sampled rows per block; by default about 2**20 logits per block.

    Returns:
        ``(informative_scores [B, N], class_token_scores [B, N])``.
    """
    check_tensor('q', q, 4)
    check_tensor('k', k, 4, q.shape)
    check_score_stride(stride)
    heads, n, d = (int(v) for v in q.shape[1:])
    work = torch.promote_types(q.dtype, torch.float32)
    q_rows = q[:, :, ::stride] * d ** -0.5
    num_rows = q_rows.shape[2]
    block = chunk_rows or _block_rows(q.shape[0], heads, n, num_rows)
    k_t = k.transpose(-2, -1)
    col_sums = q.new_zeros(q.shape[0], heads, n, dtype=work)   # batch dynamic under a trace
    for start in range(0, num_rows, block):
        logits = (q_rows[:, :, start:start + block] @ k_t).to(work)
        if attn_bias is not None:
            bias = attn_bias if attn_bias.shape[-2] == 1 else \
                attn_bias[..., ::stride, :][..., start:start + block, :]
            logits = logits + bias.to(work)
        attn = logits.softmax(dim=-1)
        if start == 0:
            cls_scores = attn[:, :, 0].mean(dim=1)
        col_sums += attn.sum(dim=2)
    return col_sums.mean(dim=1) * (n / num_rows), cls_scores


def uniform_scores(batch: int, num_tokens: int, num_keep: int, device=None) -> Tensor:
    """Scores whose top-``num_keep`` are evenly spaced positions: ``[B, N]``.

    Table 8's "Uniform" criterion expressed as a subset of tokens (the paper's Hourglass
    reference pools a grid instead; after a first reduction tokens no longer form a grid).
    """
    picks = torch.linspace(0, num_tokens - 1, num_keep, device=device).round().long()
    scores = torch.zeros(num_tokens, device=device)
    scores[picks] = 1.0
    # Ties among the zeros cannot outrank the picks; the small ramp keeps topk deterministic.
    scores += torch.linspace(0, 1e-3, num_tokens, device=device).flip(0)
    return scores.expand(batch, num_tokens)


def distinctness_scores(x: Tensor, stride: int = 1) -> Tensor:
    """How unlike its closest other token each token is: ``-max_{k != j} cos(x_j, x_k)``, ``[B, N]``.

    Args:
        x: tokens ``[B, N, C]``.
        stride: 1 (exact): the closest of all other tokens. s > 1: the closest of every s-th
            token (``k = 0, s, 2s, ...``), an ``N^2 C / s`` estimate; only the ranking is used
            (:func:`mixed_scores`), and ``docs/benchmarks.md`` gives the measured fidelity.
    """
    check_tensor('x', x, 3)
    check_distinct_stride(stride)
    return unit_distinctness(unit_tokens(x), stride)


def unit_tokens(x: Tensor) -> Tensor:
    """Tokens scaled to unit length, in float32 at least (what cosine similarities compare)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


def unit_distinctness(unit: Tensor, stride: int = 1) -> Tensor:
    """:func:`distinctness_scores` of tokens already normalised to unit length (float32 or wider),
    for a caller that reuses them (Token Transforming's cosine similarities)."""
    with torch.autocast(unit.device.type, enabled=False):   # the ranking is read in float32
        sim = unit @ unit[:, ::stride].transpose(1, 2)
    # A token is not its own neighbour: token j = k s is column k, so the self pairs are the
    # diagonal of the rows 0, s, 2s, ... In place where that is safe; ONNX's TorchScript
    # exporter loses in-place writes to a view, so a trace masks a copy.
    if torch.jit.is_tracing():
        ids = torch.arange(sim.shape[1], device=sim.device)
        return -sim.masked_fill(ids[:, None] == ids[::stride][None, :], -2.0).amax(dim=-1)
    sim[:, ::stride].diagonal(dim1=1, dim2=2).fill_(-2.0)
    return -sim.amax(dim=-1)


def mixed_scores(informative: Tensor, x: Tensor, stride: int = 1) -> Tensor:
    """Rank of the eq. 2 score plus rank of :func:`distinctness_scores` (with ``stride``):
    ``[B, N]``.

    Informative tokens that are also unlike the others rank first. An option beside the
    paper's criterion: eq. 2 alone can pick near-duplicates of one attended region, whose
    rows of W then cover the same tokens.
    """
    check_tensor('informative', informative, 2, x.shape[:2])
    return rank_sum(informative, distinctness_scores(x, stride))


def rank_sum(informative: Tensor, distinct: Tensor) -> Tensor:
    """``rank(informative) + rank(distinct)`` along dim 1 (0 = lowest), in ``informative``'s
    dtype: the score :func:`mixed_scores` ranks tokens by."""
    rank = lambda s: s.argsort(dim=1).argsort(dim=1)   # noqa: E731
    return (rank(informative) + rank(distinct)).to(informative.dtype)
