"""DPT's depth decoder (Ranftl et al., "Vision Transformers for Dense Prediction", 2021).

Reassemble -> 3x3 projection to ``channels`` -> fusion from the coarsest level up ->
depth output head -> metric depth. mmseg ships DPT only for segmentation
(``mmseg.models.decode_heads.dpt_head``); its reassemble and fusion blocks are reused here,
adapted where DPT's depth model differs:

* reassemble: CNN taps (DPT-Hybrid's ResNet stages) pass through unchanged;
* residual conv units: convolutions with bias and no norm, as DPT's depth models
  (``use_bn=False``), where mmseg's segmentation head uses bias-free convs with BN;
* output head: conv 3x3 to ``channels / 2``, 2x bilinear upsampling, conv 3x3 to 32, ReLU,
  conv 1x1 to 1, ReLU (non-negative relative inverse depth);
* metric depth: ``depth = 1 / max(scale * x + shift, 1e-8)`` (DPT-Hybrid NYU: scale 0.000305,
  shift 0.1378).
"""
from typing import List, Optional, Sequence, Union

import torch
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.decode_heads.dpt_head import FeatureFusionBlock, ReassembleBlocks
from mmseg.models.utils import resize
from mmseg.registry import MODELS as SEG_MODELS
from mmseg.utils import SampleList
from torch import Tensor, nn


class HybridReassembleBlocks(ReassembleBlocks):
    """mmseg's ``ReassembleBlocks`` where some taps are CNN feature maps used as they are.

    As in DPT, ViT tap i ``[grid [B, C, h, w], cls [B, C]]`` gets the readout (class token
    'ignore'd, 'add'ed or 'project'ed), a 1x1 conv to ``out_channels[i]`` and a resize by
    4, 2, 1 or 0.5 for i = 0..3 (transposed convs, none, a stride-2 3x3 conv). A CNN tap, as
    DPT-Hybrid's two ResNet stages, is returned unchanged (DPT's ``act_postprocess1/2`` are
    identities); its ``out_channels`` entry is its channel count.

    Args:
        in_channels: ViT width.
        out_channels: channels of the four taps after reassembling.
        readout_type: 'ignore', 'add' or 'project'.
        cnn_taps: indices of the taps that are CNN feature maps.
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int], readout_type: str,
                 cnn_taps: Sequence[int]) -> None:
        super().__init__(in_channels, list(out_channels), readout_type)
        self.cnn_taps = tuple(int(i) for i in cnn_taps)
        # mmseg builds every tap as a ViT tap; CNN taps get no modules (so no parameters).
        for i in self.cnn_taps:
            self.projects[i] = nn.Identity()
            self.resize_layers[i] = nn.Identity()
            if readout_type == 'project':
                self.readout_projects[i] = nn.Identity()

    def forward(self, inputs: List[Union[Tensor, Sequence[Tensor]]]) -> List[Tensor]:
        # mmseg's forward, per tap, skipping CNN taps (it expects a [grid, cls] pair everywhere).
        out = []
        for i, x in enumerate(inputs):
            if i in self.cnn_taps:
                out.append(x)
                continue
            x, cls_token = x
            if self.readout_type == 'project':
                tokens = x.flatten(2).transpose(1, 2)
                readout = cls_token.unsqueeze(1).expand_as(tokens)
                tokens = self.readout_projects[i](torch.cat((tokens, readout), -1))
                x = tokens.transpose(1, 2).reshape(x.shape)
            elif self.readout_type == 'add':
                x = x + cls_token[:, :, None, None]
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class ResidualConvUnit(nn.Module):
    """DPT's pre-activation residual unit of its depth models: ``x + conv(relu(conv(relu(x))))``,
    3x3 convolutions with bias, no norm. ``x``: ``[B, C, H, W]``, returned shape the same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # Not in place: the caller's x is the residual.
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class DepthFusionBlock(FeatureFusionBlock):
    """mmseg's ``FeatureFusionBlock`` (skip unit, unit, 2x upsampling, 1x1 projection) with
    DPT's depth-model residual units. The coarsest block has no skip input, so no skip unit.

    Args:
        channels: feature channels in and out.
        with_skip: whether the block takes a skip input (all but the coarsest).
        align_corners: of the 2x bilinear upsampling (DPT: True).
    """

    def __init__(self, channels: int, with_skip: bool = True, align_corners: bool = True) -> None:
        super().__init__(channels, act_cfg=dict(type='ReLU'), norm_cfg=None,
                         align_corners=align_corners)
        self.res_conv_unit1 = ResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = ResidualConvUnit(channels)


@SEG_MODELS.register_module()
class DPTDepthHead(BaseDecodeHead):
    """DPT's decoder and monocular depth head, for mmseg's ``DepthEstimator``.

    Defaults are DPT-Hybrid's NYUv2 model (``dpt_hybrid_nyu``): taps from
    :class:`~mmtt.models.dpt.TokenHybridVisionTransformer` (ResNet stages 0 and 1 at 1/4 and 1/8,
    ViT layers 8 and 11 at 1/16), 256 decoder channels, 'project' readout.

    Args:
        embed_dims: ViT width of the ViT taps.
        post_process_channels: channels of the four taps after reassembling (the ResNet stage
            widths for CNN taps).
        cnn_taps: taps that are CNN feature maps (DPT-Hybrid: 0 and 1; DPT-Base/Large: none).
        readout_type: 'ignore', 'add' or 'project' (DPT: 'project').
        channels: decoder width (DPT's ``features``).
        head_channels: width of the last hidden conv of the output head (DPT: 32).
        non_negative: ReLU on the output head (relative inverse depth is non-negative).
        invert: output metric depth ``1 / max(scale * x + shift, 1e-8)`` from the head output x;
            False outputs x itself (relative inverse depth, as DPT's MiDaS-style models).
        scale: of the inversion (DPT-Hybrid NYU: 0.000305; KITTI: 0.00006016).
        shift: of the inversion (NYU: 0.1378; KITTI: 0.00579).
        align_corners: of the final resize to the input size.
        loss_decode: loss config or list of them, computed on depth (default: ``SiLogLoss``).
        init_cfg: mmengine init config.
    """
    num_classes = 1
    out_channels = 1

    def __init__(self, embed_dims: int = 768,
                 post_process_channels: Sequence[int] = (256, 512, 768, 768),
                 cnn_taps: Sequence[int] = (0, 1), readout_type: str = 'project',
                 channels: int = 256, head_channels: int = 32, non_negative: bool = True,
                 invert: bool = True, scale: float = 0.000305, shift: float = 0.1378,
                 align_corners: bool = False,
                 loss_decode: Optional[Union[dict, Sequence[dict]]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        # BaseDecodeHead.__init__ builds a classifier, dropout and sampler that a depth head
        # has no use for (mmseg's VPDDepthHead skips it the same way): BaseModule's only.
        super(BaseDecodeHead, self).__init__(init_cfg=init_cfg)
        if len(post_process_channels) != 4:
            raise ValueError(f'post_process_channels={tuple(post_process_channels)} must give '
                             'the channels of DPT\'s four taps')
        bad = [i for i in cnn_taps if not 0 <= int(i) < 4]
        if bad:
            raise ValueError(f'cnn_taps={bad} out of range for four taps')
        if readout_type not in ('ignore', 'add', 'project'):
            raise ValueError(f"readout_type={readout_type!r}: use 'ignore', 'add' or 'project'")
        if invert and not scale > 0:
            raise ValueError(f'scale={scale!r} must be > 0 with invert=True')
        self.in_channels = tuple(post_process_channels)
        self.channels = channels
        self.align_corners = align_corners
        self.invert = invert
        self.scale = float(scale)
        self.shift = float(shift)
        self.reassemble_blocks = HybridReassembleBlocks(embed_dims, post_process_channels,
                                                        readout_type, cnn_taps)
        # DPT's scratch.layer{1..4}_rn: bias-free 3x3 convs to the decoder width.
        self.convs = nn.ModuleList(
            nn.Conv2d(c, channels, 3, padding=1, bias=False) for c in post_process_channels)
        # Coarsest first: fusion_blocks[i] is DPT's refinenet{4 - i}.
        self.fusion_blocks = nn.ModuleList(
            DepthFusionBlock(channels, with_skip=i > 0) for i in range(4))
        self.depth_head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True),
            nn.Conv2d(channels // 2, head_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_channels, 1, 1),
            nn.ReLU() if non_negative else nn.Identity())
        if loss_decode is None:
            loss_decode = dict(type='SiLogLoss')
        losses = [loss_decode] if isinstance(loss_decode, dict) else list(loss_decode)
        self.loss_decode = nn.ModuleList(SEG_MODELS.build(cfg) for cfg in losses)

    def forward(self, inputs: Sequence) -> Tensor:
        """Backbone taps -> depth ``[B, 1, H, W]`` at the input resolution (for inputs whose
        sides are multiples of 32; otherwise within the next multiple)."""
        if len(inputs) != 4:
            raise ValueError(f'DPTDepthHead needs the backbone\'s four taps, got {len(inputs)}')
        feats = self.reassemble_blocks(list(inputs))
        feats = [conv(f) for conv, f in zip(self.convs, feats)]
        out = self.fusion_blocks[0](feats[-1])
        for i in range(1, len(self.fusion_blocks)):
            out = self.fusion_blocks[i](out, feats[-(i + 1)])
        return self.to_depth(self.depth_head(out))

    def to_depth(self, x: Tensor) -> Tensor:
        """Head output ``x`` ``[B, 1, H, W]`` -> depth (see ``invert``)."""
        if not self.invert:
            return x
        return 1.0 / torch.clamp(self.scale * x + self.shift, min=1e-8)

    def loss_by_feat(self, pred_depth_map: Tensor, batch_data_samples: SampleList) -> dict:
        """Losses of ``pred_depth_map`` ``[B, 1, H, W]`` against each sample's
        ``gt_depth_map`` (resized to the ground truth's size; invalid pixels are 0 there)."""
        gt = torch.stack([s.gt_depth_map.data for s in batch_data_samples])
        pred = resize(pred_depth_map, size=gt.shape[2:], mode='bilinear',
                      align_corners=self.align_corners)
        losses = {}
        for loss in self.loss_decode:
            value = loss(pred, gt)
            losses[loss.loss_name] = losses.get(loss.loss_name, 0) + value
        return losses
