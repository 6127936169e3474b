"""Token Transforming in mmdet's ``SwinTransformer`` (DINO Swin-L, and any mmdet Swin detector).

Window attention needs a regular grid of tokens; an unordered set of informative tokens is
not one. :class:`TokenSwinTransformer` therefore reduces *each window to a smaller window*:

1. **Where.** In a block of ``reduce_layers``, between the attention and the FFN (Fig. 3),
   on the padded map cut into the host's unshifted ``w x w`` windows (in a shifted block
   each token's score comes from the shifted window it was attended in). At the end of the
   stage the tokens are recovered (eq. 9-10) to the full map, so patch merging and the
   stage's output (which the neck reads) see the host's resolution. One reduction per stage.
2. **Layout: one query per cell.** Each window is cut into a ``g x g`` lattice of cells
   (``g = reduced_window_size``) and the most informative token of each cell (column sums
   of that window's attention, eq. 2) becomes the query of that slot. Slot ``(i, j)`` of the
   reduced window thus lies in cell ``(i, j)`` of the original one, so the reduced map is a
   regular ``g x g`` grid per window. Where cell ``g // 2`` starts at token ``w // 2`` (12 -> 8,
   12 -> 7, 7 -> 5...), a shift of ``g // 2`` slots is exactly the host's shift of ``w // 2``
   tokens: the shifted windows of the reduced map hold the slots whose queries lie in the
   host's shifted windows (for odd ``g`` the wrap-around region of the last window may be
   one token off). A global top-M with the tokens sorted by position gives no such
   guarantee (the M tokens may crowd one corner of the window).
3. **W.** The many-to-many matrix of eq. 3-6 over the whole window (every token goes to
   every query by gated cosine similarity), so a slot still gathers information window-wide.
4. **Position.** Each reduced token keeps the position of its query (its anchor). The
   reduced windows' relative-position bias is the host's own table at the offsets between
   anchors, so no table is resized or interpolated and the bias stays exact for the queries.
5. **Size bias.** ``log s`` (eq. 7-8) is added to the attention logits of the following
   blocks, beside the relative-position bias and the shift mask.
6. **Padding.** Inputs that are not whole windows are padded as the host does. Padding has
   size 0 in W, so it never enters a reduced token; a cell that is all padding duplicates
   the nearest real token's query (duplicates split the mass, which the size bias makes
   equivalent to one token). The host lets real tokens attend to zero-padding keys; after
   a reduction they no longer do.

Config keys: ``token_transform`` (a ``TokenTransform``: kappa, tau, similarity, orphans,
``selection`` 'informative' or 'uniform'; ``keep_ratio`` is derived from the grid if left
out), ``reduce_layers`` (global 0-based block indices; ``[]`` is the unmodified host),
``reduced_window_size`` and ``token_recovery``. Parameters and state-dict keys are mmdet's.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmdet.models.backbones.swin import (ShiftWindowMSA, SwinBlock, SwinBlockSequence,
                                         SwinTransformer)
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..functional import attention_with_scores, size_bias
from ..functional._checks import check_layers
from ..functional.token_matrix import DENSE, TokenMatrix
from ..functional.windows import (anchored_relative_bias, grid_queries, grid_recover,
                                  grid_transform, shifted_window_mask, window_partition,
                                  window_reverse)
from ..modules import TokenRecovery, TokenTransform


def _pad_to(size: int, window: int) -> int:
    return -(-size // window) * window


class WindowGrid(NamedTuple):
    """A stage's tokens after its reduction; made by :class:`WindowTokenTransform`.

    Attributes:
        size: ``(H, W)`` of the full map; ``padded``: ``(Hp, Wp)``, whole windows.
        window, grid: sides of the host's and of the reduced windows.
        sizes: ``[B, Hr, Wr]`` token sizes s (eq. 8).
        anchors: ``[B, Hr, Wr, 2]`` long, position of each token's query in the padded map.
        index: ``[B * nW, window**2]``, recovery index of each original token (eq. 9).
    """
    size: Tuple[int, int]
    padded: Tuple[int, int]
    window: int
    grid: int
    sizes: Tensor
    anchors: Tensor
    index: Tensor

    @property
    def reduced_size(self) -> Tuple[int, int]:
        return (self.padded[0] // self.window * self.grid, self.padded[1] // self.window * self.grid)

    def recover(self, x: Tensor) -> Tensor:
        """``[B, Hr * Wr, C]`` -> ``[B, H * W, C]`` (eq. 10)."""
        full = grid_recover(x.view(x.shape[0], *self.reduced_size, -1), self.index, self.window,
                            self.grid, self.padded, self.size)
        return full.reshape(x.shape[0], -1, x.shape[-1])


class WindowTokenTransform(nn.Module):
    """Reduces every ``window x window`` window to ``grid x grid`` tokens; no parameters.

    Args:
        transform: the ``TokenTransform`` holding kappa, tau, similarity, orphans, selection.
        recovery: the ``TokenRecovery`` whose index (eq. 9) the stage recovers with.
        window, grid: sides of the host's and of the reduced windows.
    """

    def __init__(self, transform: TokenTransform, recovery: TokenRecovery, window: int,
                 grid: int) -> None:
        super().__init__()
        self.transform, self.recovery = transform, recovery
        self.window, self.grid = window, grid

    @property
    def needs_scores(self) -> bool:
        return self.transform.selection == 'informative'

    def forward(self, x: Tensor, size: Tuple[int, int],
                scores: Optional[Tensor] = None) -> Tuple[Tensor, WindowGrid]:
        """``x: [B, H * W, C]``, ``scores: [B, Hp, Wp]`` -> ``([B, Hr * Wr, C], WindowGrid)``."""
        t, window, grid = self.transform, self.window, self.grid
        b, c = x.shape[0], x.shape[-1]
        h, w = size
        hp, wp = _pad_to(h, window), _pad_to(w, window)
        pad = (0, 0, 0, wp - w, 0, hp - h)
        windows = window_partition(F.pad(x.reshape(b, h, w, c), pad), window)
        valid = window_partition(F.pad(x.new_ones(b, h, w, 1), pad), window)[..., 0]
        win_scores = None if scores is None else window_partition(scores[..., None], window)[..., 0]
        queries = grid_queries(win_scores, valid > 0, window, grid)
        weight, sizes = grid_transform(windows, queries, t.kappa, t.tau, valid,
                                       similarity_kind=t.similarity, orphans=t.orphans)
        matrix = TokenMatrix(DENSE, window * window, grid * grid, sizes, weight=weight)
        reduced = matrix.apply(windows)
        index = self.recovery.index(windows, reduced, 0, matrix)
        coords = torch.stack(torch.meshgrid(torch.arange(hp, device=x.device),
                                            torch.arange(wp, device=x.device), indexing='ij'), -1)
        anchors = window_partition(coords.expand(b, -1, -1, -1), window).gather(
            1, queries[..., None].expand(-1, -1, 2))
        hr, wr = hp // window * grid, wp // window * grid
        out = WindowGrid((h, w), (hp, wp), window, grid,
                         window_reverse(sizes[..., None], grid, hr, wr)[..., 0],
                         window_reverse(anchors, grid, hr, wr), index)
        return window_reverse(reduced, grid, hr, wr).reshape(b, hr * wr, c), out

    def extra_repr(self) -> str:
        return f'window={self.window}, grid={self.grid}'


class TokenShiftWindowMSA(ShiftWindowMSA):
    """mmdet's (shifted) window attention that can also run on a reduced grid or return the
    informative scores. Without either it is the host's ``forward`` unchanged.

    The reduced and the scoring paths rewrite the host's ``forward`` (pad, roll, partition,
    attend, reverse): the window size and the additive biases differ, the weights do not.
    """

    def forward(self, query: Tensor, hw_shape: Tuple[int, int],
                grid: Optional[WindowGrid] = None) -> Tensor:
        if grid is None:
            return super().forward(query, hw_shape)
        return self._attend(query, hw_shape, grid, with_scores=False)[0]

    def forward_with_scores(self, query: Tensor, hw_shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Full-resolution attention and the informative scores (eq. 2) of every token,
        ``[B, Hp, Wp]``, each from the window it was attended in."""
        return self._attend(query, hw_shape, None, with_scores=True)

    def _attend(self, query: Tensor, hw_shape: Tuple[int, int], grid: Optional[WindowGrid],
                with_scores: bool) -> Tuple[Tensor, Optional[Tensor]]:
        msa = self.w_msa
        b, _, c = query.shape
        h, w = grid.reduced_size if grid is not None else hw_shape
        window = grid.grid if grid is not None else self.window_size
        # g // 2 slots stand for the host's w // 2 tokens (exactly where cell g // 2 starts at
        # token w // 2, see the module docstring).
        shift = (window // 2 if self.shift_size else 0) if grid is not None else self.shift_size
        hp, wp = _pad_to(h, window), _pad_to(w, window)
        x = F.pad(query.view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))

        def to_windows(m: Tensor) -> Tensor:
            return window_partition(torch.roll(m, (-shift, -shift), (1, 2)) if shift else m, window)

        windows = to_windows(x)
        n, heads = window * window, msa.num_heads
        q, k, v = msa.qkv(windows).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        table = msa.relative_position_bias_table
        if grid is None:
            bias = table[msa.relative_position_index.view(-1)].view(n, n, heads).permute(2, 0, 1)[None]
        else:
            bias = anchored_relative_bias(table, to_windows(grid.anchors), self.window_size)
        bias = bias.to(q.dtype)
        if shift:
            mask = shifted_window_mask(hp, wp, window, shift, query.device).to(q.dtype)
            bias = bias + mask.repeat(b, 1, 1)[:, None]
        if grid is not None:
            bias = bias + size_bias(to_windows(grid.sizes[..., None])[..., 0], q.dtype)
        scores = None
        if with_scores:
            # attention_with_scores scales by d ** -0.5; the host may use qk_scale instead. It
            # has no attention dropout (0 in mmdet's Swin configs; none at inference anyway).
            q = q * (msa.scale * q.shape[-1] ** 0.5)
            out, informative, _ = attention_with_scores(q, k, v, bias)
            scores = window_reverse(informative[..., None], window, hp, wp)
            scores = (torch.roll(scores, (shift, shift), (1, 2)) if shift else scores)[..., 0]
        else:
            drop = msa.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop,
                                                 scale=msa.scale)
        out = msa.proj_drop(msa.proj(out.transpose(1, 2).reshape(-1, n, c)))
        x = window_reverse(out, window, hp, wp)
        x = torch.roll(x, (shift, shift), (1, 2)) if shift else x
        return self.drop(x[:, :h, :w].reshape(b, h * w, c)), scores


class TokenSwinBlock(SwinBlock):
    """mmdet's Swin block that runs on a reduced grid, or reduces between attention and FFN.

    Without a grid or a reduction it is the host's ``forward`` unchanged.
    """
    mmtt_transform: Optional[WindowTokenTransform]   # set by TokenSwinTransformer

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], grid: Optional[WindowGrid] = None):
        """Returns ``x``, or ``(x, WindowGrid)`` in the block that reduces."""
        transform = self.mmtt_transform
        if grid is None and transform is None:
            return super().forward(x, hw_shape)

        def inner(x: Tensor):
            # The host's _inner_forward, with the grid passed on or the reduction inserted.
            if transform is None:
                x = x + self.attn(self.norm1(x), hw_shape, grid)
                return self.ffn(self.norm2(x), identity=x)
            if transform.needs_scores:
                attended, scores = self.attn.forward_with_scores(self.norm1(x), hw_shape)
            else:
                attended, scores = self.attn(self.norm1(x), hw_shape), None
            x, new_grid = transform(x + attended, hw_shape, scores)
            return self.ffn(self.norm2(x), identity=x), new_grid

        if self.with_cp and x.requires_grad:
            # Non-reentrant: it takes the grid along and returns one from the reducing block.
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


class TokenSwinBlockSequence(SwinBlockSequence):
    """A Swin stage that carries its reduced grid from block to block and recovers the full
    map before patch merging and the stage's output (a rewrite of the host's ``forward``)."""

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        grid = None
        for block in self.blocks:
            if block.mmtt_transform is not None:
                x, grid = block(x, hw_shape)
            else:
                x = block(x, hw_shape, grid)
        if grid is not None:
            x = grid.recover(x)
        if self.downsample:
            x_down, down_hw_shape = self.downsample(x, hw_shape)
            return x_down, down_hw_shape, x, hw_shape
        return x, hw_shape, x, hw_shape


@DET_MODELS.register_module()
class TokenSwinTransformer(SwinTransformer):
    """mmdet ``SwinTransformer`` with Token Transforming inside windowed attention.

    Args:
        token_transform: ``TokenTransform`` config; ``method`` must be 'transform' and
            ``selection`` 'informative' or 'uniform'. Without ``keep_ratio`` it is set to
            ``(reduced_window_size / window_size) ** 2``.
        reduce_layers: global 0-based indices of the blocks (over all stages, e.g. 4 is the
            first block of stage 2 for depths (2, 2, 18, 2)) whose tokens are reduced after
            their attention; at most one per stage. ``[]`` gives mmdet's model exactly.
        reduced_window_size: side of the reduced windows, in ``[2, window_size - 1]``.
        token_recovery: ``TokenRecovery`` config; required with any reduction.
        **kwargs: mmdet ``SwinTransformer`` arguments, unchanged.
    """

    def __init__(self, token_transform: Optional[dict] = None, reduce_layers: Sequence[int] = (),
                 reduced_window_size: Optional[int] = None, token_recovery: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        window = self.stages[0].blocks[0].attn.window_size
        stage_of = [i for i, stage in enumerate(self.stages) for _ in stage.blocks]
        reduce_layers = self._check_layers(reduce_layers, stage_of)
        transform = recovery = None
        if reduce_layers:
            if token_transform is None:
                raise ValueError('reduce_layers is set but token_transform is None')
            if token_recovery is None:
                raise ValueError('token_recovery is required: each reduced stage is recovered '
                                 'to the full map before patch merging and its output')
            self._check_grid(reduced_window_size, window)
            transform = self._build_transform(token_transform, window, reduced_window_size)
            recovery = MODELS.build(token_recovery)
        self.token_transform, self.token_recovery = transform, recovery
        self.reduce_layers, self.reduced_window_size = tuple(reduce_layers), reduced_window_size
        # mmdet builds its stages itself; swapping their classes keeps every parameter as is.
        blocks = [block for stage in self.stages for block in stage.blocks]
        for stage in self.stages:
            stage.__class__ = TokenSwinBlockSequence
        for i, block in enumerate(blocks):
            block.__class__ = TokenSwinBlock
            block.attn.__class__ = TokenShiftWindowMSA
            block.mmtt_transform = (WindowTokenTransform(transform, recovery, window,
                                                         reduced_window_size)
                                    if i in reduce_layers else None)

    @staticmethod
    def _check_layers(reduce_layers: Sequence[int], stage_of: List[int]) -> List[int]:
        layers = check_layers('reduce_layers', reduce_layers)
        bad = [i for i in layers if not 0 <= i < len(stage_of)]
        if bad:
            raise ValueError(f'reduce_layers={bad} out of range: the backbone has '
                             f'sum(depths)={len(stage_of)} blocks')
        stages = [stage_of[i] for i in layers]
        twice = sorted({s for s in stages if stages.count(s) > 1})
        if twice:
            raise ValueError(f'reduce_layers={layers} reduce stage(s) {twice} more than once; '
                             'at most one reduction per stage')
        return layers

    @staticmethod
    def _check_grid(grid, window: int) -> None:
        if isinstance(grid, bool) or not isinstance(grid, int) or not 2 <= grid < window:
            raise ValueError(f'reduced_window_size={grid!r} must be an int in [2, {window - 1}] '
                             f'(a square grid smaller than window_size={window})')

    @staticmethod
    def _build_transform(cfg: dict, window: int, grid: int) -> TokenTransform:
        cfg = dict(cfg)
        cfg.setdefault('keep_ratio', grid * grid / (window * window))
        transform = MODELS.build(cfg)
        if transform.method != 'transform':
            raise ValueError(f'token_transform.method={transform.method!r} is not supported in '
                             "windows; use 'transform'")
        if transform.top_k is not None:
            raise ValueError(f'token_transform.top_k={transform.top_k} is not supported in windows '
                             '(W spans one window, so it is small already); leave it out')
        if transform.selection not in ('informative', 'uniform'):
            raise ValueError(f'token_transform.selection={transform.selection!r} is not supported '
                             "(Swin has no class token); use 'informative' or 'uniform'")
        if transform.num_keep(window * window) != grid * grid:
            raise ValueError(
                f'token_transform.keep_ratio={transform.keep_ratio} keeps '
                f'{transform.num_keep(window * window)} of {window * window} tokens per window, '
                f'but reduced_window_size={grid} needs {grid * grid}; leave keep_ratio out to '
                'derive it')
        return transform
