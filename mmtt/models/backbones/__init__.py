"""Registered backbones: host backbones with Token Transforming inserted by config.

``vit``: :class:`TokenVisionTransformer` (mmseg); ``swin``: :class:`TokenSwinTransformer`
(mmdet). Each is imported by :mod:`mmtt.models` when its host library is installed.
"""
