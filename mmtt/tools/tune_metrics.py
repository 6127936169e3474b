"""Label-free agreement of a reduced model with the unmodified one, in each task's own terms.

The unmodified model's predictions on the user's images stand in for labels: a segmentation's
mIoU and pixel agreement against its maps, a depth map's AbsRel and delta < 1.25 against its
depth, a detector's box mAP@[.5:.95] against its confident boxes, a classifier's top-1
agreement and KL divergence against its class distribution. Pure tensor code; every function
returns plain floats, its first key being the task's headline agreement (higher is better, in
[0, 1]).
"""
from typing import Dict, List, Sequence

import torch
from torch import Tensor

# The headline agreement of each task: what --target-agreement reads.
HEADLINE = {'segmentation': 'miou', 'depth': 'delta1', 'detection': 'map', 'classification': 'top1',
            'saliency': 'iou'}


def segmentation_agreement(preds: Sequence[Tensor], refs: Sequence[Tensor]) -> Dict[str, float]:
    """mIoU and pixel agreement of label maps against the unmodified model's.

    IoU per class is summed over all images (as mmseg's ``IoUMetric`` does over a data set)
    and averaged over the classes present in either prediction.

    Args:
        preds, refs: one ``[H, W]`` integer map per image (shapes equal pairwise).
    """
    inter: Dict[int, int] = {}
    union: Dict[int, int] = {}
    same = total = 0
    for pred, ref in zip(preds, refs):
        pred, ref = pred.flatten().long(), ref.flatten().long()
        same += int((pred == ref).sum())
        total += pred.numel()
        for c in torch.unique(torch.cat([pred, ref])).tolist():
            a, b = pred == c, ref == c
            inter[c] = inter.get(c, 0) + int((a & b).sum())
            union[c] = union.get(c, 0) + int((a | b).sum())
    ious = [inter[c] / union[c] for c in union if union[c]]
    return {'miou': sum(ious) / len(ious) if ious else 1.0, 'pixel_agreement': same / max(total, 1)}


def depth_agreement(preds: Sequence[Tensor], refs: Sequence[Tensor]) -> Dict[str, float]:
    """delta < 1.25 and AbsRel of depth maps against the unmodified model's, over all pixels of
    all images where the unmodified depth is positive.

    Args:
        preds, refs: one ``[H, W]`` depth map per image.
    """
    ratios, rel = [], []
    for pred, ref in zip(preds, refs):
        valid = ref > 0
        p, r = pred[valid].double().clamp_min(1e-8), ref[valid].double()
        ratios.append(torch.maximum(p / r, r / p))
        rel.append((p - r).abs() / r)
    ratio, rel = torch.cat(ratios), torch.cat(rel)
    if not ratio.numel():
        return {'delta1': 1.0, 'abs_rel': 0.0}
    return {'delta1': (ratio < 1.25).double().mean().item(), 'abs_rel': rel.mean().item()}


def classification_agreement(scores: Tensor, ref_scores: Tensor) -> Dict[str, float]:
    """Top-1 agreement and mean KL(unmodified || reduced) of class distributions.

    Args:
        scores, ref_scores: ``[N, classes]`` probabilities (rows sum to 1).
    """
    top1 = (scores.argmax(1) == ref_scores.argmax(1)).double().mean().item()
    p, q = ref_scores.double().clamp_min(1e-12), scores.double().clamp_min(1e-12)
    kl = (p * (p.log() - q.log())).sum(1).mean().item()
    return {'top1': top1, 'kl': kl}


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a: [N, 4]`` and ``b: [M, 4]`` (x1, y1, x2, y2): ``[N, M]``."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp_min(1e-12)


def _average_precision(matched: Tensor, scores: Tensor, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of detections (``matched``: true positive or not)."""
    order = scores.argsort(descending=True, stable=True)
    tp = matched[order].double().cumsum(0)
    fp = (~matched[order]).double().cumsum(0)
    recall = tp / num_gt
    precision = tp / (tp + fp).clamp_min(1e-12)
    # The precision envelope: the best precision at this recall or any higher one.
    precision = precision.flip(0).cummax(0).values.flip(0)
    points = torch.arange(101, dtype=torch.float64) / 100   # 0.5 exactly, as recall 1/2 is
    index = torch.searchsorted(recall, points, side='left')
    found = index < len(recall)
    return float(precision[index[found]].sum() / 101)


def detection_map(preds: List[Dict[str, Tensor]], refs: List[Dict[str, Tensor]],
                  score_thr: float, max_dets: int = 100) -> Dict[str, float]:
    """Box mAP@[.5:.95] and mAP@.5 of a detector against the unmodified detector's boxes.

    The unmodified boxes scoring at least ``score_thr`` are the pseudo ground truth; the
    reduced detector's ``max_dets`` best boxes per image are ranked by score, matched greedily
    per class and IoU threshold (COCO's rule: each detection takes the unmatched box it
    overlaps most), and AP is interpolated at 101 recall points, averaged over classes with
    pseudo ground truth and over the ten thresholds.

    Args:
        preds, refs: one dict per image with ``bboxes [K, 4]`` (x1, y1, x2, y2), ``scores [K]``
            and ``labels [K]``.
        score_thr: the unmodified model's confidence from which a box counts as ground truth.

    Raises:
        ValueError: no unmodified box reaches ``score_thr`` on any image.
    """
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    classes = sorted({int(c) for r in refs for c in r['labels'][r['scores'] >= score_thr]})
    if not classes:
        raise ValueError(f'--score-thr {score_thr:g}: the unmodified model finds no box that '
                         'confident on these images; lower it')
    ap = torch.zeros(len(thresholds), len(classes), dtype=torch.float64)
    for ci, c in enumerate(classes):
        per_thr: List[List[Tensor]] = [[] for _ in thresholds]
        scores, num_gt = [], 0
        for pred, ref in zip(preds, refs):
            gt = ref['bboxes'][(ref['labels'] == c) & (ref['scores'] >= score_thr)].double()
            keep = (pred['labels'] == c).nonzero().flatten()
            keep = keep[pred['scores'][keep].argsort(descending=True, stable=True)][:max_dets]
            dets, conf = pred['bboxes'][keep].double(), pred['scores'][keep].double()
            num_gt += len(gt)
            scores.append(conf)
            iou = box_iou(dets, gt) if len(gt) and len(dets) else torch.zeros(len(dets), len(gt))
            for ti, t in enumerate(thresholds):
                taken = torch.zeros(len(gt), dtype=torch.bool)
                matched = torch.zeros(len(dets), dtype=torch.bool)
                for d in range(len(dets)):
                    if not len(gt):
                        break
                    candidates = iou[d].masked_fill(taken, -1.0)
                    best = int(candidates.argmax())
                    if candidates[best] >= t:
                        taken[best] = matched[d] = True
                per_thr[ti].append(matched)
        all_scores = torch.cat(scores)
        for ti in range(len(thresholds)):
            ap[ti, ci] = _average_precision(torch.cat(per_thr[ti]), all_scores, num_gt) if num_gt else 0.0
    return {'map': ap.mean().item(), 'map_50': ap[0].mean().item(), 'num_pseudo_boxes':
            sum(int((r['scores'] >= score_thr).sum()) for r in refs)}
