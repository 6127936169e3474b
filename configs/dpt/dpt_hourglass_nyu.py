# DPT-Hybrid on NYUv2 with Hourglass (Liang et al., NeurIPS 2022) in its ViT, training-free: the
# paper's Table 3 comparison (Hourglass 202 GFLOPs, AbsRel 0.113; Token Transforming 200,
# 0.108). Settings from Expedit-DPT (util/parser.py defaults; README, NYUv2: alpha 2, 14 x 14):
# 5 soft k-means rounds, 5 x 5 neighbourhood, temperature 1 for clustering and reconstruction,
# reconstruction from the 20 nearest centres. Two differences: mmtt keeps the 30 x 40 grid's
# aspect ratio (12 x 16 = 192 centres; Expedit reshapes to a square 14 x 14 = 196), and
# clusters between a block's attention and its MLP (Expedit: after block 2's output, so mmtt's
# block 3 runs its attention on all tokens and its MLP on the centres).
#   python tools/test.py configs/dpt/dpt_hourglass_nyu.py dpt_hybrid_nyu_mmtt.pth
_base_ = ['./dpt_nyu.py']

model = dict(
    backbone=dict(
        token_transform=dict(type='TokenTransform', method='hourglass', keep_ratio=0.16,
                             cluster_iters=5, cluster_window=5, cluster_temperature=1.0),
        reduce_layers=(3,),
        token_recovery=dict(type='TokenRecovery', mode='reconstruct', k=20, temperature=1.0)))
