"""One module per host library, each holding only what differs from host to host (which
classes it swaps, where its attention's projections are, its block loop); what they share is
:mod:`mmtt.hosts.adapter`.

``timm``, ``lvvit`` (tlt's LV-ViT) and ``transformers`` (CLIP, LLaVA) are entered with
``apply_patch(model, ...)``; ``mmseg`` (ViT, Segmenter), ``mmdet`` (Swin) and ``mmpretrain``
(ViT, DeiT, T2T-ViT, PS-ViT) register backbones built from a config (``import mmtt`` does it
for each installed host). :func:`mmtt.remove_patch` undoes either kind. Each host module
checks its library's version when imported.
"""
