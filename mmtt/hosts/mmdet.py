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
7. **Hourglass** (``method='hourglass'``). Each window is clustered to a ``g x g`` grid of
   centres instead (soft k-means over the window, Expedit-DINO's per-window clustering);
   the centres' anchors are the tokens nearest their cells' centres, and the stage is rebuilt
   with ``TokenRecovery(mode='reconstruct')`` within each window, as Expedit does.

Config keys: ``token_transform`` (a ``TokenTransform``: kappa, tau, similarity, orphans,
``selection`` 'informative' or 'uniform'; ``keep_ratio`` is derived from the grid if left
out), ``reduce_layers`` (global 0-based block indices; ``[]`` is the unmodified host),
``reduced_window_size``, ``token_recovery`` and ``metric`` (None or ``'hidden'``: windows compare hidden states).
Parameters and state-dict keys are mmdet's.
"""
from typing import List, Optional, Sequence, Tuple

from ..compat import check_versions

check_versions('mmdet', 'mmcv')

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmdet.models.backbones.swin import ShiftWindowMSA, SwinBlock, SwinBlockSequence, SwinTransformer
from mmdet.registry import MODELS as DET_MODELS
from torch import Tensor

from ..functional import size_bias
from ..functional.windows import (
    anchored_relative_bias,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from ..modules import TokenTransform
from ..modules.methods import WINDOW_METHODS
from ..modules.presets import PRESETS
from ..modules.window_transform import WindowGrid, WindowTokenTransform, pad_to
from ._build import build_module
from .adapter import Capture, attend, check_recovery, check_reduce_layers, record_parent, swap_class


class TokenShiftWindowMSA(ShiftWindowMSA):
    """mmdet's (shifted) window attention that can also run on a reduced grid or return the
    informative scores. Without either it is the host's ``forward`` unchanged.

    ``forward(query, hw_shape, grid=None, capture=None)``: with a
    :class:`~mmtt.hosts.adapter.Capture` it returns ``(out, Captured)``, the scores ``[B, Hp,
    Wp]`` each from the window the token was attended in. The reduced and the scoring paths
    rewrite the host's ``forward`` (pad, roll, partition, attend, reverse): the window size
    and the additive biases differ, the weights do not.
    """

    def forward(self, query: Tensor, hw_shape: Tuple[int, int], grid: Optional[WindowGrid] = None,
                capture: Optional[Capture] = None):
        if grid is None and capture is None:
            return super().forward(query, hw_shape)
        msa = self.w_msa
        b, _, c = query.shape
        h, w = grid.reduced_size if grid is not None else hw_shape
        window = grid.grid if grid is not None else self.window_size
        # g // 2 slots stand for the host's w // 2 tokens (exactly where cell g // 2 starts at
        # token w // 2, see the module docstring).
        shift = (window // 2 if self.shift_size else 0) if grid is not None else self.shift_size
        hp, wp = pad_to(h, window), pad_to(w, window)
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
        # The host may scale logits by qk_scale instead of d ** -0.5; attend takes the scale.
        out, captured = attend(q, k, v, bias, capture or Capture(), scale=msa.scale,
                               dropout_p=msa.attn_drop.p if self.training else 0.0)
        out = msa.proj_drop(msa.proj(out.transpose(1, 2).reshape(-1, n, c)))
        x = window_reverse(out, window, hp, wp)
        x = torch.roll(x, (shift, shift), (1, 2)) if shift else x
        out = self.drop(x[:, :h, :w].reshape(b, h * w, c))
        if capture is None:
            return out
        scores = captured.scores
        if scores is not None:   # per window -> the padded map, shifted back
            scores = window_reverse(scores[..., None], window, hp, wp)
            scores = (torch.roll(scores, (shift, shift), (1, 2)) if shift else scores)[..., 0]
        return out, captured._replace(scores=scores)


class TokenSwinBlock(SwinBlock):
    """mmdet's Swin block that runs on a reduced grid, or reduces between attention and FFN.

    Without a grid or a reduction it is the host's ``forward`` unchanged.
    """
    window_transform: Optional[WindowTokenTransform]   # set by TokenSwinTransformer

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], grid: Optional[WindowGrid] = None):
        """Returns ``x``, or ``(x, WindowGrid)`` in the block that reduces."""
        transform = self.window_transform
        if grid is None and transform is None:
            return super().forward(x, hw_shape)

        def inner(x: Tensor):
            # The host's _inner_forward, with the grid passed on or the reduction inserted.
            if transform is None:
                x = x + self.attn(self.norm1(x), hw_shape, grid)
                return self.ffn(self.norm2(x), identity=x)
            attended, captured = self.attn(self.norm1(x), hw_shape,
                                           capture=Capture.of(transform.transform))
            x, new_grid = transform(x + attended, hw_shape, captured.scores)
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
            if block.window_transform is not None:
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
        token_transform: ``TokenTransform`` config; ``method`` must run per window
            (:data:`mmtt.modules.methods.WINDOW_METHODS`: 'transform' or 'hourglass'; the
            others have no window form) and ``selection`` 'informative' or 'uniform'. Without
            ``keep_ratio`` it is set to ``(reduced_window_size / window_size) ** 2``.
        reduce_layers: global 0-based indices of the blocks (over all stages, e.g. 4 is the
            first block of stage 2 for depths (2, 2, 18, 2)) whose tokens are reduced after
            their attention; at most one per stage. ``[]`` gives mmdet's model exactly.
        reduced_window_size: side of the reduced windows, in ``[2, window_size - 1]``.
        token_recovery: ``TokenRecovery`` config; required with any reduction.
        **kwargs: mmdet ``SwinTransformer`` arguments, unchanged.
    """

    def __init__(self, token_transform: Optional[dict] = None, reduce_layers: Sequence[int] = (),
                 reduced_window_size: Optional[int] = None, token_recovery: Optional[dict] = None,
                 metric: Optional[str] = None, **kwargs) -> None:
        if metric not in (None, 'hidden'):
            raise ValueError(f"metric={metric!r}: Swin's window reductions compare hidden states "
                             "only; leave metric out or give 'hidden'")
        super().__init__(**kwargs)
        window = self.stages[0].blocks[0].attn.window_size
        stage_of = [i for i, stage in enumerate(self.stages) for _ in stage.blocks]
        reduce_layers = self._check_layers(reduce_layers, stage_of)
        transform = recovery = None
        if reduce_layers:
            if token_transform is None:
                raise ValueError('reduce_layers is set but token_transform is None')
            check_recovery(token_recovery, True, 'each reduced stage is recovered to the full '
                           'map before patch merging and its output')
            self._check_grid(reduced_window_size, window)
            transform = self._build_transform(token_transform, window, reduced_window_size)
            recovery = build_module('token_recovery', token_recovery)
        self.token_transform, self.token_recovery = transform, recovery
        self.reduce_layers, self.reduced_window_size = tuple(reduce_layers), reduced_window_size
        record_parent(self, ('token_transform', 'token_recovery', 'reduce_layers',
                             'reduced_window_size'))
        # mmdet builds its stages itself; swapping their classes keeps every parameter as is.
        blocks = [block for stage in self.stages for block in stage.blocks]
        for stage in self.stages:
            swap_class(stage, TokenSwinBlockSequence)
        for i, block in enumerate(blocks):
            swap_class(block, TokenSwinBlock, window_transform=(
                WindowTokenTransform(transform, recovery, window, reduced_window_size)
                if i in reduce_layers else None))
            swap_class(block.attn, TokenShiftWindowMSA)

    @staticmethod
    def _check_layers(reduce_layers: Sequence[int], stage_of: List[int]) -> Tuple[int, ...]:
        layers = check_reduce_layers('reduce_layers', reduce_layers, len(stage_of),
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
        transform = build_module('token_transform', cfg)
        if not transform.spec.windows:
            raise ValueError(f'token_transform.method={transform.method!r} is not supported in '
                             f'windows; use {" or ".join(map(repr, WINDOW_METHODS))}')
        if transform.preset is not None and not PRESETS[transform.preset].windows:
            usable = ' or '.join(repr(k) for k, v in PRESETS.items() if v.windows)
            raise ValueError(f'token_transform.preset={transform.preset!r} cannot run in Swin windows '
                             f'(its top_k and anchor need a whole sequence); use preset={usable} there')
        for key in ('top_k', 'anchor'):
            if getattr(transform, key, None):
                raise ValueError(f'token_transform.{key}={getattr(transform, key)} is not supported '
                                 'in windows (W spans one window, so it is small already); leave it out')
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
