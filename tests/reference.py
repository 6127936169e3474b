"""The paper's equations written out literally, in float64 loops, independent of mmtt.

Slow on purpose: every quantity is computed element by element as eq. 2-10 state it.
"""
import math

import torch


def informative_scores(attn):
    """Eq. 2 per head, then the mean over heads."""
    b, h, n, _ = attn.shape
    out = torch.zeros(b, n, dtype=torch.float64)
    for bi in range(b):
        for j in range(n):
            out[bi, j] = sum(float(attn[bi, hi, i, j]) for hi in range(h) for i in range(n)) / h
    return out


def cosine(u, v):
    return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))


def transform_matrix(x, scores, num_keep, kappa, tau):
    """Eq. 3-6 and 8 for one image: x [N, C], scores [N]. Returns W [M, N], s [M], m [M, N]."""
    n = x.shape[0]
    informative = sorted(range(n), key=lambda j: -float(scores[j]))[:num_keep]
    gsim = [[0.0] * n for _ in informative]
    for i, q in enumerate(informative):
        for j in range(n):
            sim = cosine(x[q].double(), x[j].double())
            gsim[i][j] = sim if sim >= kappa else 0.0
    m = torch.zeros(num_keep, n, dtype=torch.float64)
    for j in range(n):   # eq. 5: softmax over the M informative tokens, per column
        denom = sum(math.exp(gsim[k][j] * tau) for k in range(num_keep))
        for i in range(num_keep):
            m[i, j] = math.exp(gsim[i][j] * tau) / denom
    s = m.sum(dim=1)     # eq. 8
    w = m / s[:, None]   # eq. 6
    return w, s, m


def nearest_index(x, y):
    """Eq. 9 for one image."""
    return torch.tensor([min(range(y.shape[0]), key=lambda i: float((x[mm] - y[i]).norm()))
                         for mm in range(x.shape[0])])


def tome_merge(x, metric, r):
    """ToMe's bipartite soft matching for one image, as its paper describes, with size 1 tokens:
    returns the output tokens (unmerged A in order, then B) and their sizes."""
    a_idx, b_idx = list(range(0, x.shape[0], 2)), list(range(1, x.shape[0], 2))
    best = {}
    for a in a_idx:
        sims = [cosine(metric[a].double(), metric[b].double()) for b in b_idx]
        k = max(range(len(b_idx)), key=lambda t: sims[t])
        best[a] = (sims[k], k)
    merged = sorted(a_idx, key=lambda a: -best[a][0])[:r]
    groups = {k: [b] for k, b in enumerate(b_idx)}
    for a in merged:
        groups[best[a][1]].append(a)
    rows = [[a] for a in a_idx if a not in merged] + [groups[k] for k in range(len(b_idx))]
    tokens = torch.stack([x[g].double().mean(dim=0) for g in rows])
    return tokens, torch.tensor([float(len(g)) for g in rows], dtype=torch.float64)
