"""Token Transforming in mmdet's Swin (DINO): window functions, exactness with the reduction off,
shapes, bad settings, the shipped configs, FLOPs, and tools/test.py end to end on a tiny COCO."""
import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from tiny_coco import (
    REPO,
    TINY_SWIN,
    TINY_TT,
    load_results,
    run_test_tool,
    save_dino_checkpoint,
    tiny_dino,
    write_config,
    write_tiny_coco,
)
from torch import nn

from mmtt.analysis import DetTensorForward, count_flops, detection_test_shape, is_detector
from mmtt.functional import size_bias
from mmtt.functional import windows as W
from mmtt.hosts.adapter import Capture as ScoreRequest
from mmtt.hosts.mmdet import TokenSwinTransformer
from mmtt.modules import TokenRecovery, TokenTransform
from mmtt.modules.window_transform import WindowTokenTransform

CONFIGS = [REPO / 'configs/dino/dino_tt_swin-l_coco.py', REPO / 'configs/dino/dino_tt_swin-l_coco_36e.py']
HOURGLASS = REPO / 'configs/dino/dino_hourglass_swin-l_coco.py'


def build(cfg):
    init_default_scope('mmdet')
    model = MODELS.build(cfg)
    # DINO creates some parameters with torch.empty and fills them only in init_weights; without
    # it about 1 build in 12 predicts NaN boxes, with or without the reduction.
    model.init_weights()
    model.eval()   # mmdet's Swin.train() returns None, so no chaining
    return model


def tt_swin(**overrides) -> dict:
    return {**TINY_SWIN, **TINY_TT, 'type': 'TokenSwinTransformer', **overrides}


def cell_constant_map(b, h, w, c, window, grid, seed=0):
    """A map whose tokens are equal within each cell of each window, distinct across cells."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.arange(h), torch.arange(w)
    cell_r = (rows // window) * grid + (rows % window) * grid // window
    cell_c = (cols // window) * grid + (cols % window) * grid // window
    values = torch.randn(b, int(cell_r.max()) + 1, int(cell_c.max()) + 1, c, generator=g,
                         dtype=torch.float64)
    return values[:, cell_r][:, :, cell_c]


# ---- pure window functions ----

def test_partition_reverse_roundtrip_and_cells():
    x = torch.randn(2, 12, 8, 3)
    windows = W.window_partition(x, 4)
    assert windows.shape == (12, 16, 3)
    assert torch.equal(windows[1].view(4, 4, 3), x[0, :4, 4:8])   # row-major windows
    assert torch.equal(W.window_reverse(windows, 4, 12, 8), x)
    cells = W.grid_cells(12, 8)                # runs of 2, 1, 2, 1, ... tokens per axis
    runs = torch.tensor([2, 1] * 4)
    assert torch.equal(cells.bincount().view(8, 8), runs[:, None] * runs[None, :])
    with pytest.raises(ValueError, match='whole number'):
        W.window_partition(torch.randn(1, 10, 8, 3), 4)


def test_grid_queries_take_each_cells_best_real_token():
    scores = torch.arange(16.0).flip(0)[None].repeat(2, 1)   # best token first
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1] = torch.arange(16) % 4 < 1                       # window 2: only column 0 real
    q = W.grid_queries(scores, valid, 4, 2)
    assert q[0].tolist() == [0, 2, 8, 10]                     # top-left of each 2x2 cell
    # Padding never becomes a query: empty cells take the nearest real token (duplicates).
    assert valid[1, q[1]].all() and q[1].tolist() == [0, 0, 8, 8]
    centre = W.grid_queries(None, torch.ones(1, 9, dtype=torch.bool), 3, 1)
    assert centre.tolist() == [[4]]


def test_anchored_bias_at_grid_positions_is_the_hosts_bias():
    init_default_scope('mmdet')
    from mmdet.models.backbones.swin import WindowMSA
    msa = WindowMSA(8, 2, (5, 5))
    nn.init.normal_(msa.relative_position_bias_table)
    host = msa.relative_position_bias_table[msa.relative_position_index.view(-1)].view(25, 25, 2)
    grid = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(5), indexing='ij'), -1).view(1, 25, 2)
    ours = W.anchored_relative_bias(msa.relative_position_bias_table, grid + 7, 5)
    assert torch.equal(ours[0], host.permute(2, 0, 1))


def test_cell_constant_window_reduces_losslessly_and_size_bias_keeps_attention():
    """Tokens equal within cells: W maps each cell to its slot with s = cell size, and attention
    over the slots with log s equals attention over all tokens (eq. 7)."""
    x = W.window_partition(cell_constant_map(1, 6, 6, 16, 6, 3), 6)      # [1, 36, 16]
    valid = torch.ones(1, 36, dtype=torch.bool)
    q = W.grid_queries(torch.rand(1, 36, dtype=torch.float64), valid, 6, 3)
    w, s = W.grid_transform(x, q, 0.55, 150.0)
    y = w @ x
    cells = W.grid_cells(6, 3)
    assert torch.allclose(y[0, cells], x[0], atol=1e-9) and torch.allclose(s, torch.full_like(s, 4.0))
    proj = torch.randn(16, 3 * 16, dtype=torch.float64)
    qf, kf, vf = (x @ proj).view(1, 36, 3, 2, 8).permute(2, 0, 3, 1, 4)
    qr, kr, vr = (y @ proj).view(1, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
    full = F.scaled_dot_product_attention(qf, kf, vf)
    reduced = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=size_bias(s, qr.dtype))
    assert torch.allclose(full, reduced[:, :, cells], atol=1e-9)


def test_window_transform_with_padding_recovers_cell_constant_maps_exactly():
    transform = TokenTransform(keep_ratio=25 / 49)
    module = WindowTokenTransform(transform, TokenRecovery(), window=7, grid=5)
    x = cell_constant_map(2, 11, 16, 8, 7, 5, seed=1).float()                # pads to 14 x 21
    reduced, grid = module(x.reshape(2, -1, 8), (11, 16), torch.rand(2, 14, 21))
    assert reduced.shape == (2, 10 * 15, 8) and grid.reduced_size == (10, 15)
    assert torch.allclose(grid.recover(reduced), x.reshape(2, -1, 8), atol=1e-5)
    # Padding has size 0: the sizes of a window add up to its real tokens (rows 7, 4; cols 7, 7, 2).
    per_window = W.window_partition(grid.sizes[..., None], 5)[..., 0].sum(-1).view(2, 2, 3)
    real = torch.tensor([7.0, 4])[:, None] * torch.tensor([7.0, 7, 2])[None, :]
    assert torch.allclose(per_window, real.expand(2, 2, 3), atol=1e-4)


def test_window_hourglass_clusters_each_window_and_padding_takes_no_part():
    """Hourglass per window: on whole windows each window is hourglass_matrix of its own tokens;
    with padding, a window's sizes add up to its real tokens; 'reconstruct' rebuilds each
    token from its window's centres by the reconstruction relation."""
    from mmtt.functional import hourglass_matrix, reconstruction_relation
    transform = TokenTransform(keep_ratio=25 / 49, method='hourglass', cluster_iters=3,
                               cluster_temperature=0.5)
    recovery = TokenRecovery('reconstruct', k=4, temperature=0.5)
    module = WindowTokenTransform(transform, recovery, window=7, grid=5)
    x = torch.randn(2, 14 * 21, 8, dtype=torch.float64)
    reduced, grid = module(x, (14, 21))
    windows = W.window_partition(x.view(2, 14, 21, 8), 7)                  # [12, 49, 8]
    ref = hourglass_matrix(windows, (7, 7), (5, 5), iterations=3, temperature=0.5)
    slots = W.window_partition(reduced.view(2, 10, 15, 8), 5)
    assert torch.allclose(slots, ref.apply(windows), atol=1e-12)
    assert torch.allclose(W.window_partition(grid.sizes[..., None], 5)[..., 0], ref.sizes, atol=1e-12)
    relation = reconstruction_relation(windows, slots, 4, 0.5)
    rebuilt = W.window_reverse(relation @ slots, 7, 14, 21).reshape(2, -1, 8)
    assert grid.index is None and torch.allclose(grid.recover(reduced), rebuilt, atol=1e-12)
    # Anchors: the token nearest each cell's centre, in the padded map's coordinates.
    cells = W.grid_queries(None, torch.ones(1, 49, dtype=torch.bool), 7, 5)[0]
    assert torch.equal(grid.anchors[0, :5, :5].reshape(-1, 2),
                       torch.stack([cells // 7, cells % 7], -1))
    x = torch.randn(2, 11 * 16, 8)                                          # pads to 14 x 21
    reduced, grid = module(x, (11, 16))
    per_window = W.window_partition(grid.sizes[..., None], 5)[..., 0].sum(-1).view(2, 2, 3)
    real = torch.tensor([7.0, 4])[:, None] * torch.tensor([7.0, 7, 2])[None, :]
    assert torch.allclose(per_window, real.expand(2, 2, 3), atol=1e-4)
    assert (grid.sizes > 0).all() and torch.isfinite(grid.recover(reduced)).all()


# ---- the backbone ----

def test_state_dict_is_mmdets_and_reduction_off_is_exact():
    torch.manual_seed(0)
    ref = build(dict(TINY_SWIN, type='SwinTransformer'))
    ours = build(tt_swin())
    off = build(tt_swin(reduce_layers=[]))
    for model in (ours, off):
        model.load_state_dict(ref.state_dict(), strict=True)
        assert list(model.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 101, 130)      # not whole windows at any stage, batch > 1
    with torch.no_grad():
        for a, b in zip(ref(x), off(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('shift', [False, True])
def test_scoring_attention_equals_hosts_and_scores_are_window_column_sums(shift):
    torch.manual_seed(0)
    ours = build(tt_swin())
    attn = ours.stages[0].blocks[int(shift)].attn
    probs = {}

    class Capture(nn.Module):
        def forward(self, logits):
            probs['p'] = logits.softmax(-1)
            return probs['p']

    attn.w_msa.softmax = Capture()
    x, hw = torch.randn(2, 11 * 16, 32), (11, 16)
    with torch.no_grad():
        host = type(attn).__mro__[1].forward(attn, x, hw)
        out, captured = attn(x, hw, capture=ScoreRequest('informative'))
        scores = captured.scores
    assert torch.allclose(out, host, atol=1e-5)
    sums = probs['p'].sum(2).mean(1)[..., None]                            # [B * nW, 49, 1]
    ref = W.window_reverse(sums, 7, 14, 21)[..., 0]
    ref = torch.roll(ref, (3, 3), (1, 2)) if shift else ref
    assert torch.allclose(scores, ref, atol=1e-5)


HOURGLASS_TT = dict(token_transform=dict(type='TokenTransform', method='hourglass', cluster_iters=3),
                    token_recovery=dict(type='TokenRecovery', mode='reconstruct', k=9))


@pytest.mark.parametrize('tt', [
    dict(token_transform=dict(TINY_TT['token_transform'], selection='informative'),
         token_recovery=dict(type='TokenRecovery', mode='nearest')),
    dict(token_transform=dict(TINY_TT['token_transform'], selection='uniform'),
         token_recovery=dict(type='TokenRecovery', mode='assignment')),
    HOURGLASS_TT], ids=['informative-nearest', 'uniform-assignment', 'hourglass-reconstruct'])
def test_reduced_backbone_outputs_full_resolution_at_every_stage(tt):
    torch.manual_seed(0)
    ref = build(dict(TINY_SWIN, type='SwinTransformer'))
    ours = build(tt_swin(**tt, reduce_layers=[0, 3, 4, 7]))
    ours.load_state_dict(ref.state_dict())
    for shape in [(2, 3, 97, 61), (1, 3, 56, 56)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want, got = ref(x), ours(x)
        assert [o.shape for o in got] == [o.shape for o in want]
        assert all(torch.isfinite(o).all() for o in got)
        assert not torch.allclose(got[1], want[1])   # stage 1 was reduced


@pytest.mark.parametrize('tt', [{}, HOURGLASS_TT], ids=['transform', 'hourglass'])
def test_reduced_backbone_trains_with_checkpointing(tt):
    torch.manual_seed(0)
    ours = build(tt_swin(with_cp=True, **tt))
    ours.train()
    x = torch.randn(2, 3, 64, 72, requires_grad=True)
    sum(o.square().mean() for o in ours(x)).backward()
    grads = {n: p.grad for n, p in ours.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize('override,needle', [
    (dict(reduce_layers=[2, 8]), 'reduce_layers=[8] out of range'),
    (dict(reduce_layers=[4, 5]), 'reduce stage(s) [2] more than once'),
    (dict(reduced_window_size=7), 'reduced_window_size=7 must be an int in [2, 6]'),
    (dict(reduced_window_size=1), 'reduced_window_size=1'),
    (dict(reduced_window_size=None), 'reduced_window_size=None'),
    (dict(reduced_window_size=4.5), 'reduced_window_size=4.5'),
    (dict(token_transform=dict(type='TokenTransform', keep_ratio=0.7)), 'token_transform.keep_ratio=0.7'),
    (dict(token_transform=dict(type='TokenTransform', method='tome')), "token_transform.method='tome'"),
    (dict(token_transform=dict(type='TokenTransform', method='hourglass', cluster_window=2)),
     'cluster_window=2'),
    (dict(token_transform=dict(type='TokenTransform', selection='cls')), "token_transform.selection='cls'"),
    (dict(token_transform=dict(type='TokenTransform', tau=0)), 'tau=0'),
    (dict(token_transform=dict(type='TokenTransform', top_k=4)), 'token_transform.top_k=4'),
    (dict(token_transform=dict(type='TokenTransform', anchor=True)), 'token_transform.anchor=True'),
    (dict(token_transform=dict(type='TokenTransform', preset='fast')),
     "token_transform.preset='fast' cannot run in Swin windows (its top_k and anchor need a whole "
     "sequence); use preset='paper' there"),
    (dict(token_transform=None), 'token_transform is None'),
    (dict(token_recovery=None), 'token_recovery is required'),
])
def test_bad_settings_fail_at_build_naming_the_key(override, needle):
    with pytest.raises(ValueError) as info:
        build(tt_swin(**override))
    assert needle in str(info.value)


# ---- the shipped configs ----

def tiny_shipped(path, **backbone):
    cfg = Config.fromfile(str(path))
    # Keep the shipped window geometry (12 -> reduced_window_size) and reduce_layers (a valid
    # block of the tiny depths too); shrink everything else.
    swin = dict(cfg.model.backbone, **dict(TINY_SWIN, window_size=12), **backbone)
    return tiny_dino(cfg, swin)


def test_shipped_configs_build_and_run_with_tiny_overrides():
    backbones = [Config.fromfile(str(p)).model.backbone for p in CONFIGS]
    assert backbones[0] == backbones[1]      # the 36e delta is the 12e one
    assert backbones[0].reduce_layers and backbones[0].reduced_window_size < backbones[0].window_size
    assert detection_test_shape(Config(dict(default_scope='mmseg'))) is None
    for path in CONFIGS:
        cfg = tiny_shipped(path)
        assert detection_test_shape(cfg) == (800, 1333)
        model = build(cfg.model)
        assert isinstance(model.backbone, TokenSwinTransformer) and is_detector(model)
        with torch.no_grad():
            cls_scores, boxes = DetTensorForward(model)(torch.randn(1, 3, 70, 101))
        assert torch.isfinite(boxes).all() and cls_scores.shape[-1] == 2


def test_hourglass_config_is_expedits_operating_point_and_runs_with_tiny_overrides():
    backbone = Config.fromfile(str(HOURGLASS)).model.backbone
    tt = Config.fromfile(str(CONFIGS[0])).model.backbone
    # Expedit-DINO's dino_hourglass_swin_large_384: 12 x 12 windows clustered to 8 x 8, 3 rounds,
    # 5 x 5 neighbourhood, 1 / temperture = 0.01, reconstruction k 25.
    assert backbone.type == tt.type and backbone.reduced_window_size == 8
    assert backbone.token_transform == dict(type='TokenTransform', method='hourglass', cluster_iters=3,
                                            cluster_window=5, cluster_temperature=0.01)
    assert backbone.token_recovery == dict(type='TokenRecovery', mode='reconstruct', k=25,
                                           temperature=0.01)
    model = build(tiny_shipped(HOURGLASS, reduce_layers=[4]).model)
    with torch.no_grad():
        cls_scores, boxes = DetTensorForward(model)(torch.randn(1, 3, 70, 101))
    assert torch.isfinite(boxes).all() and cls_scores.shape[-1] == 2


def test_flops_count_the_detector_and_the_reduction_saves():
    # Stage 2 has 2 blocks here: reducing at its first (4) leaves 1.5 blocks on the grid.
    reduced = build(tiny_shipped(CONFIGS[0], reduce_layers=[4]).model)
    plain = build(tiny_shipped(CONFIGS[0], reduce_layers=[]).model)
    x = (torch.randn(1, 3, 192, 288),)
    r, p = count_flops(DetTensorForward(reduced), x), count_flops(DetTensorForward(plain), x)
    assert r.compression > 0 and p.compression == 0
    assert r.total < p.total and r.by_module['model'] < p.by_module['model']


# ---- tools/test.py end to end on a tiny COCO ----

@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('coco')
    write_tiny_coco(tmp / 'data')
    return tmp, save_dino_checkpoint(tmp)


def test_tools_test_prints_bbox_map_and_reduction_off_equals_mmdet(tiny_setup):
    tmp, ckpt = tiny_setup
    plain = write_config(tmp, 'plain', dict(TINY_SWIN, type='SwinTransformer'))
    off = write_config(tmp, 'off', tt_swin(reduce_layers=[]))
    reduced = write_config(tmp, 'reduced', tt_swin())
    maps = [run_test_tool(tmp, cfg, ckpt, f'{cfg.stem}.pkl') for cfg in (plain, off, reduced)]
    assert maps[0] == maps[1] and all(0.0 <= m <= 1.0 for m in maps)
    a, b, c = (load_results(tmp / f'{name}.pkl') for name in ('plain', 'off', 'reduced'))
    assert len(a) == len(b) == len(c) == 4
    for x, y, z in zip(a, b, c):
        assert x['img_id'] == y['img_id'] == z['img_id']
        assert torch.isfinite(x['pred_instances']['bboxes']).all()
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(x['pred_instances'][key], y['pred_instances'][key])
        assert z['pred_instances']['bboxes'].shape[-1] == 4
    assert not all(torch.equal(x['pred_instances']['scores'], z['pred_instances']['scores'])
                   for x, z in zip(a, c))
