"""Token Transforming for Hugging Face ``transformers``: CLIP vision encoders and LLaVA-1.5.

:func:`apply_patch` takes a ``CLIPVisionModel`` or a ``LlavaForConditionalGeneration`` (the
``llava-hf/llava-1.5-7b-hf`` layout) and reduces tokens in the CLIP encoder layers, between
attention and MLP (Fig. 3), the class token never reduced. Layers after a reduction add
``log s`` to their attention logits as the ``attention_mask`` HF's SDPA attention already
takes, so unreduced layers run HF's own code on the fused kernel.

The encoder runs its layers itself (:class:`TokenCLIPEncoder` restates HF's loop) because each
layer takes and returns the forward's :class:`~mmtt.modules.host.TokenState`: nothing about a
forward is stored on the model.

For LLaVA the hidden states of the feature layer (``vision_feature_layer``,
``vision_feature_select_strategy``) have M patch tokens instead of 576, and HF's own
``get_image_features`` sends them through the projector. The processor still writes one
placeholder per original patch, so the patched model removes the surplus placeholders of
each image before the language model runs (:func:`shorten_inputs`): ``input_ids``,
``attention_mask``, ``position_ids`` and ``labels`` lose the same positions, and rows are
re-padded (on the side the mask shows, else the left). ``generate`` shortens the prompt once,
before HF's loop, so the KV cache, the attention mask and the cache positions all count the
short prompt; the returned sequences start with the caller's prompt as given.

Classes are swapped in place (``module.__class__``) and the added ``token_transform``
submodules have no parameters, so the state dict keeps its keys and :func:`remove_patch`
restores the model exactly.
"""
# ruff: noqa: E402  (the host's versions are checked before the host is imported)
import types
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ..compat import check_versions

check_versions('transformers')

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn
from transformers import CLIPVisionModel, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPSdpaAttention,
)
from transformers.utils import can_return_tuple

from ..functional import size_bias
from ..modules import TokenTransform
from ..modules.host import (
    BlockSettings,
    Capture,
    TokenState,
    attend,
    patch_settings,
    reduce_tokens,
    reduces,
)

# LLaVA-1.5 (CLIP ViT-L/14 at 336 px: 24 layers, 576 patches, features from the output of
# layer 22). The paper does not state its schedule; Table 5 compares at "comparable compression"
# with PruMerge, which keeps 5.5% of the 576 tokens (32), and PruMerge+ keeps 25% (144).
# Counts per reduction (every method; ToMe's floor of half is never reached):
#   'llava-1.5/32':  576 -> 323 -> 181 -> 101 -> 57 -> 32 visual tokens
#   'llava-1.5/144': 576 -> 363 -> 229 -> 144 visual tokens
SCHEDULES: Dict[str, dict] = {
    'llava-1.5/32': dict(keep_ratio=0.56, reduce_layers=(6, 10, 14, 18, 22)),
    'llava-1.5/144': dict(keep_ratio=0.63, reduce_layers=(6, 12, 18)),
}


class _CapturingAttention:
    """Mixed before HF's ``CLIPSdpaAttention`` or ``CLIPAttention``: with ``capture`` (a
    :class:`~mmtt.modules.host.Capture`) it restates their forward (the same projections and
    mask sum) around :func:`mmtt.modules.host.attend` and returns ``(out, Captured)``."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None,
                causal_attention_mask: Optional[Tensor] = None, output_attentions: bool = False,
                capture: Optional[Capture] = None):
        if capture is None:
            return super().forward(hidden_states, attention_mask, causal_attention_mask,
                                   output_attentions)
        if attention_mask is not None and causal_attention_mask is not None:
            mask = attention_mask + causal_attention_mask
        else:
            mask = attention_mask if causal_attention_mask is None else causal_attention_mask
        b, n, _ = hidden_states.shape
        q, k, v = (proj(hidden_states).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out, captured = attend(q, k, v, mask, capture,
                               dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.embed_dim)), captured


class TokenCLIPSdpaAttention(_CapturingAttention, CLIPSdpaAttention):
    """HF's SDPA attention of CLIP, also returning what a reduction needs."""


class TokenCLIPAttention(_CapturingAttention, CLIPAttention):
    """HF's eager attention of CLIP, also returning what a reduction needs."""


class TokenCLIPEncoderLayer(CLIPEncoderLayer):
    """HF's ``CLIPEncoderLayer`` that takes and returns the forward's :class:`TokenState`,
    applies the size bias, and reduces tokens between attention and MLP where it has a
    transform. Returns ``(HF's outputs tuple, state)``; a reducing layer's attention weights
    (``output_attentions``) are None."""
    token_transform: Optional[TokenTransform]
    _mmtt: BlockSettings

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor],
                causal_attention_mask: Optional[Tensor], output_attentions: bool = False,
                state: Optional[TokenState] = None) -> Tuple[tuple, TokenState]:
        state = state or TokenState()
        n = hidden_states.shape[1]
        bias = size_bias(state.sizes, hidden_states.dtype)   # [B, 1, 1, N]
        if bias is not None:
            if output_attentions or not isinstance(self.self_attn, CLIPSdpaAttention):
                bias = bias.expand(-1, -1, n, -1)   # the eager attention checks [B, 1, N, N]
            attention_mask = bias if attention_mask is None else attention_mask + bias
        transform, settings = self.token_transform, self._mmtt
        if not reduces(transform, n - settings.num_prefix):
            return super().forward(hidden_states, attention_mask, causal_attention_mask,
                                   output_attentions), state
        # HF's CLIPEncoderLayer.forward, with the reduction between attention and MLP.
        attended, captured = self.self_attn(self.layer_norm1(hidden_states), attention_mask,
                                            causal_attention_mask,
                                            capture=Capture.of(transform, keys=settings.keys))
        x, state = reduce_tokens(hidden_states + attended, state, transform, None,
                                 settings.num_prefix, captured)
        x = x + self.mlp(self.layer_norm2(x))
        return ((x, None) if output_attentions else (x,)), state


class TokenCLIPEncoder(CLIPEncoder):
    """HF's ``CLIPEncoder`` whose loop (restated from HF's forward) hands the token state from
    layer to layer. The hidden states it returns have each layer's own token count."""

    @can_return_tuple
    def forward(self, inputs_embeds: Tensor, attention_mask: Optional[Tensor] = None,
                causal_attention_mask: Optional[Tensor] = None,
                output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None) -> BaseModelOutput:
        if attention_mask is not None or causal_attention_mask is not None:
            # A [B, 1, N, N] mask cannot follow the tokens through a reduction; CLIP's vision
            # tower never passes one.
            raise ValueError('attention_mask and causal_attention_mask must be None in a patched '
                             'CLIP vision encoder')
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        encoder_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        hidden_states, state = inputs_embeds, TokenState()
        for layer in self.layers:
            if output_hidden_states:
                encoder_states = encoder_states + (hidden_states,)
            if self.gradient_checkpointing and self.training:
                # Non-reentrant (HF's default function is reentrant): the state goes in and out.
                outputs, state = cp.checkpoint(layer, hidden_states, None, None, output_attentions,
                                               state, use_reentrant=False)
            else:
                outputs, state = layer(hidden_states, None, None, output_attentions, state)
            hidden_states = outputs[0]
            if output_attentions:
                all_attentions = all_attentions + (outputs[1],)
        if output_hidden_states:
            encoder_states = encoder_states + (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=encoder_states,
                               attentions=all_attentions)


class ShortInputs(NamedTuple):
    """What :func:`shorten_inputs` returns: the language model's inputs with M placeholders per
    image (``[B, L']`` each, None where the caller gave None) and ``keep [B, L]``, which
    positions of the caller's ``input_ids`` survive."""
    input_ids: Tensor
    attention_mask: Optional[Tensor]
    position_ids: Optional[Tensor]
    labels: Optional[Tensor]
    keep: Tensor


class TokenLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """HF's LLaVA whose prompt loses the placeholders of the visual tokens its patched vision
    tower removed. ``forward`` and ``generate`` are HF's, called on the shortened inputs; the
    logits (and ``past_key_values``) of ``forward`` are those of the shortened sequence."""

    def visual_tokens(self, num_patches: int, vision_feature_layer: Union[int, List[int], None] = None,
                      vision_feature_select_strategy: Optional[str] = None) -> int:
        """Tokens per image the projector receives, for ``num_patches`` patches (576 for
        LLaVA-1.5), under the model's configured feature layer and strategy unless given."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = (self.config.vision_feature_select_strategy if vision_feature_select_strategy is None
                    else vision_feature_select_strategy)
        counts = _hidden_state_tokens(self.vision_tower.vision_model.encoder, num_patches)
        picks = [layer] if isinstance(layer, int) else list(layer)
        selected = sorted({counts[i] for i in picks})
        if len(selected) > 1:
            raise ValueError(f'vision_feature_layer={layer!r} concatenates hidden states of '
                             f'{selected} tokens: a reduction lies between the selected layers')
        return selected[0] - (1 if strategy == 'default' else 0)

    def shorten_inputs(self, input_ids: Tensor, pixel_values: Tensor,
                       attention_mask: Optional[Tensor] = None,
                       position_ids: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                       vision_feature_layer: Union[int, List[int], None] = None,
                       vision_feature_select_strategy: Optional[str] = None) -> Optional[ShortInputs]:
        """The inputs with each image's placeholder run cut to its kept count, or None when
        ``input_ids`` already hold that many (or nothing is reduced). See :func:`shorten_inputs`."""
        strategy = (self.config.vision_feature_select_strategy if vision_feature_select_strategy is None
                    else vision_feature_select_strategy)
        patch = self.vision_tower.vision_model.embeddings.patch_size
        num_patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        full = num_patches + (0 if strategy == 'default' else 1)
        kept = self.visual_tokens(num_patches, vision_feature_layer, strategy)
        return _shorten(input_ids, self.config.image_token_index, pixel_values.shape[0], full,
                        kept, attention_mask, position_ids, labels, _pad_id(self))

    def forward(self, input_ids: Optional[Tensor] = None, pixel_values: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                past_key_values=None, inputs_embeds: Optional[Tensor] = None,
                vision_feature_layer: Union[int, List[int], None] = None,
                vision_feature_select_strategy: Optional[str] = None,
                labels: Optional[Tensor] = None, use_cache: Optional[bool] = None,
                output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                cache_position: Optional[Tensor] = None, logits_to_keep: Union[int, Tensor] = 0,
                image_sizes: Optional[Tensor] = None, **lm_kwargs):
        """HF's forward (same arguments) on the shortened inputs."""
        if input_ids is not None and pixel_values is not None:
            short = self.shorten_inputs(input_ids, pixel_values, attention_mask, position_ids,
                                        labels, vision_feature_layer, vision_feature_select_strategy)
            if short is not None:
                input_ids, attention_mask, position_ids, labels = short[:4]
                if cache_position is not None:   # the prompt's slots in the cache, now fewer
                    cache_position = cache_position[0] + torch.arange(
                        input_ids.shape[1], device=cache_position.device)
        return super().forward(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, labels=labels,
            use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict,
            cache_position=cache_position, logits_to_keep=logits_to_keep, image_sizes=image_sizes,
            **lm_kwargs)

    def generate(self, inputs: Optional[Tensor] = None, generation_config=None, *args, **kwargs):
        """HF's ``generate`` on the shortened prompt. The returned sequences (``.sequences`` of
        a dict output) are the caller's ``input_ids`` followed by the new tokens, as unpatched;
        the other outputs (scores, cache, attentions) are those of the shortened prompt."""
        input_ids = kwargs.get('input_ids') if inputs is None else inputs
        pixel_values = kwargs.get('pixel_values')
        short = None
        if input_ids is not None and pixel_values is not None:
            short = self.shorten_inputs(input_ids, pixel_values, kwargs.get('attention_mask'),
                                        kwargs.get('position_ids'), None,
                                        kwargs.get('vision_feature_layer'),
                                        kwargs.get('vision_feature_select_strategy'))
        if short is None:
            return super().generate(inputs, generation_config, *args, **kwargs)
        kwargs.pop('input_ids', None)
        for key, value in (('attention_mask', short.attention_mask),
                           ('position_ids', short.position_ids)):
            if value is not None:
                kwargs[key] = value
        out = super().generate(short.input_ids, generation_config, *args, **kwargs)
        sequences = out if isinstance(out, Tensor) else out.sequences
        prompt = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
        sequences = torch.cat([prompt, sequences[:, short.input_ids.shape[1]:]], dim=1)
        if isinstance(out, Tensor):
            return sequences
        out.sequences = sequences
        return out


def shorten_inputs(model: LlavaForConditionalGeneration, input_ids: Tensor, pixel_values: Tensor,
                   attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                   labels: Optional[Tensor] = None, **feature_kwargs) -> Optional[ShortInputs]:
    """What a patched LLaVA feeds its language model, for harnesses running their own loop.

    The k-th image (in ``pixel_values`` order) owns the k-th run of ``full`` placeholders in
    ``input_ids``, counted row-major as HF's ``masked_scatter`` fills them; the first M of each
    run are kept. Kept tokens keep their order; a token's new position is its old one less the
    placeholders removed before it. Rows that lose different counts are re-padded (ids with
    the pad token, ``attention_mask`` 0, ``position_ids`` 1, ``labels`` -100) on the right if
    ``attention_mask`` shows right padding, else on the left (the LLaVA processor's side, which
    ``generate`` needs); positions the caller masked out are dropped before re-padding, so the
    result is no longer than needed.

    Args:
        model: a LLaVA patched by :func:`apply_patch`.
        input_ids: ``[B, L]`` as the processor wrote them (one placeholder per patch).
        pixel_values: ``[I, 3, H, W]``, every image of the batch.
        attention_mask, position_ids, labels: ``[B, L]`` or None.
        **feature_kwargs: ``vision_feature_layer``, ``vision_feature_select_strategy``.

    Returns:
        :class:`ShortInputs`, or None if ``input_ids`` already hold M placeholders per image
        (or nothing is reduced).
    """
    if not isinstance(model, TokenLlavaForConditionalGeneration):
        raise ValueError(f'model must be a LLaVA patched by apply_patch, got {type(model).__name__}')
    return model.shorten_inputs(input_ids, pixel_values, attention_mask, position_ids, labels,
                                **feature_kwargs)


def _hidden_state_tokens(encoder: CLIPEncoder, num_patches: int) -> List[int]:
    """Tokens (class token included) of each of the encoder's ``hidden_states``: the embeddings,
    then the output of every layer."""
    counts = [1 + num_patches]
    for layer in encoder.layers:
        n = counts[-1] - 1
        transform = getattr(layer, 'token_transform', None)
        counts.append(1 + (transform.num_keep(n) if transform is not None else n))
    return counts


def _pad_id(model: LlavaForConditionalGeneration) -> int:
    """A token id for new padding slots (masked out; it only has to embed, and must not be the
    image placeholder)."""
    candidates = (model.config.pad_token_id, model.config.text_config.pad_token_id, 0, 1)
    return next(i for i in candidates if i is not None and i >= 0 and i != model.config.image_token_index)


def _shorten(input_ids: Tensor, image_token: int, num_images: int, full: int, kept: int,
             attention_mask: Optional[Tensor], position_ids: Optional[Tensor],
             labels: Optional[Tensor], pad_id: int) -> Optional[ShortInputs]:
    is_image = input_ids == image_token
    count = int(is_image.sum())
    if count == num_images * kept:
        return None
    if count != num_images * full:
        raise ValueError(f'input_ids hold {count} image placeholder tokens (id {image_token}); '
                         f'{num_images} image(s) need {num_images * full} (one per patch, as the '
                         f'processor writes them) or {num_images * kept} (the kept visual tokens)')
    rank = (is_image.flatten().cumsum(0) - 1).view_as(input_ids)   # row-major, as masked_scatter
    drop = is_image & (rank % full >= kept)
    keep = ~drop
    if attention_mask is not None:   # old padding goes too: the rows are padded anew
        keep = keep & (attention_mask != 0)
    lengths = keep.sum(dim=1)
    length = int(lengths.max())
    batch = input_ids.shape[0]
    # Left unless the mask shows right padding: the LLaVA processor pads left, as generate needs.
    left = attention_mask is None or bool((attention_mask[:, 0] == 0).any()) or not bool(
        (attention_mask[:, -1] == 0).any())
    dest = keep.cumsum(dim=1) - 1
    if left:
        dest = dest + (length - lengths)[:, None]
    rows = torch.arange(batch, device=input_ids.device)[:, None].expand_as(keep)[keep]
    cols = dest[keep]

    def gather(values: Tensor, fill) -> Tensor:
        out = values.new_full((batch, length), fill)
        out[rows, cols] = values.expand_as(keep)[keep]
        return out

    new_mask = None
    if attention_mask is not None:
        new_mask = gather(attention_mask, 0)
    elif bool((lengths != length).any()):
        new_mask = gather(torch.ones_like(input_ids), 0)
    new_positions = None
    if position_ids is not None:
        new_positions = gather(position_ids.expand_as(keep) - drop.cumsum(dim=1), 1)
    return ShortInputs(gather(input_ids, pad_id), new_mask, new_positions,
                       None if labels is None else gather(labels, -100), keep)


# Patched class -> HF class, for the class swaps and their undoing.
_ATTENTION = {CLIPSdpaAttention: TokenCLIPSdpaAttention, CLIPAttention: TokenCLIPAttention}
_UNPATCHED = {TokenCLIPSdpaAttention: CLIPSdpaAttention, TokenCLIPAttention: CLIPAttention,
              TokenCLIPEncoderLayer: CLIPEncoderLayer, TokenCLIPEncoder: CLIPEncoder,
              TokenLlavaForConditionalGeneration: LlavaForConditionalGeneration}


def _set_class(module: nn.Module, cls: type) -> None:
    """``module.__class__ = cls``; an accelerate hook (``device_map=...``) calls the forward it
    saved as ``_old_forward``, which is re-bound to the new class's forward."""
    module.__class__ = cls
    if '_old_forward' in vars(module):
        module._old_forward = types.MethodType(cls.forward, module)


def _vision_parts(model: nn.Module):
    """``(CLIPVisionTransformer, its encoder, the LLaVA or None)`` of a supported model."""
    if isinstance(model, TokenLlavaForConditionalGeneration) or (
            isinstance(model, CLIPVisionModel)
            and isinstance(model.vision_model.encoder, TokenCLIPEncoder)):
        raise ValueError('model is already patched; call remove_patch(model) first')
    if type(model) is LlavaForConditionalGeneration:
        tower = model.vision_tower
        if type(tower) is not CLIPVisionModel:
            raise ValueError(f'vision_tower is {type(tower).__name__}; apply_patch supports a LLaVA '
                             'whose vision tower is a CLIPVisionModel')
        return tower.vision_model, tower.vision_model.encoder, model
    if type(model) is CLIPVisionModel:
        return model.vision_model, model.vision_model.encoder, None
    raise ValueError(f'model must be a LlavaForConditionalGeneration or a CLIPVisionModel, got '
                     f'{type(model).__name__}')


def _feature_depth(llava: LlavaForConditionalGeneration, depth: int) -> int:
    """Index into ``hidden_states`` (0: embeddings, i + 1: output of layer i) of the first
    feature layer LLaVA reads."""
    layer = llava.config.vision_feature_layer
    picks = [layer] if isinstance(layer, int) else list(layer)
    bad = [i for i in picks if not isinstance(i, int) or not -(depth + 1) <= i <= depth]
    if bad:
        raise ValueError(f'vision_feature_layer={layer!r} is out of range for a vision tower '
                         f'with {depth} layers')
    return min(i % (depth + 1) for i in picks)


def apply_patch(model: nn.Module, method: Optional[str] = None, keep_ratio: float = 0.7,
                reduce_layers: Optional[Sequence[int]] = None, kappa: Optional[float] = None,
                tau: Optional[float] = None, metric: Optional[str] = None,
                preset: Optional[str] = None, schedule: Optional[str] = None,
                layers: Optional[Sequence[int]] = None, **transform_kwargs) -> nn.Module:
    """Insert token reduction into a HF CLIP vision encoder, in place.

    Args:
        model: a ``LlavaForConditionalGeneration`` with a ``CLIPVisionModel`` tower (LLaVA-1.5),
            or a bare ``CLIPVisionModel``; attention ``'sdpa'`` or ``'eager'``.
        method: ``'transform'`` (the default), ``'tome'``, ``'evit'`` or ``'prune'``.
        keep_ratio: fraction of patch tokens kept at each reduction.
        reduce_layers: 0-based encoder layers after whose attention tokens are reduced (a
            sequence of ints). For LLaVA each must come before the feature layer's output:
            ``vision_feature_layer=-2`` of 24 layers reads layer 22, so layers 0-22.
        kappa, tau: see :class:`mmtt.TokenTransform`.
        metric: ``'hidden'`` (the layer's hidden states, the paper's) or ``'keys'``
            (head-averaged keys, ToMe's). Default: keys for ToMe, hidden states otherwise.
        preset: ``'paper'`` or ``'fast'`` (:data:`mmtt.modules.presets.PRESETS`), or None.
        schedule: a name from :data:`SCHEDULES`, overriding ``keep_ratio`` and ``reduce_layers``
            (also accepted as ``preset=``).
        layers: another name of ``reduce_layers``.
        **transform_kwargs: other :class:`mmtt.TokenTransform` arguments (``selection``,
            ``similarity``, ``orphans``, ``top_k``, ``score_stride``).

    Returns:
        The same model object, patched.
    """
    vision, encoder, llava = _vision_parts(model)
    depth = len(encoder.layers)
    patch = patch_settings(SCHEDULES, depth, f'a vision tower with {depth} layers', method=method,
                           keep_ratio=keep_ratio, reduce_layers=reduce_layers, kappa=kappa, tau=tau,
                           metric=metric, preset=preset, schedule=schedule, layers=layers,
                           transform_kwargs=transform_kwargs)
    key, reduce_layers = patch.key, patch.reduce_layers
    if llava is not None:
        first = _feature_depth(llava, depth)
        late = [i for i in reduce_layers if i >= first]
        if late:
            raise ValueError(f'{key}={late} come after the feature layer: vision_feature_layer='
                             f'{llava.config.vision_feature_layer!r} reads the output of layer '
                             f'{first - 1}, so reductions must be in layers 0-{first - 1}')
    for i, layer in enumerate(encoder.layers):
        if type(layer) is not CLIPEncoderLayer or type(layer.self_attn) not in _ATTENTION:
            raise ValueError(f'layer {i} is {type(layer).__name__} with '
                             f'{type(layer.self_attn).__name__} (attn_implementation='
                             f'{vision.config._attn_implementation!r}); apply_patch supports '
                             "CLIPEncoderLayer with 'sdpa' or 'eager' attention")
    block_settings = BlockSettings(num_prefix=1, recovery=None, keys=patch.keys)
    for i, layer in enumerate(encoder.layers):
        _set_class(layer, TokenCLIPEncoderLayer)
        layer.token_transform = patch.transform_for(i, depth)
        layer._mmtt = block_settings
        if i in reduce_layers:
            _set_class(layer.self_attn, _ATTENTION[type(layer.self_attn)])
    _set_class(encoder, TokenCLIPEncoder)
    if llava is not None:
        _set_class(llava, TokenLlavaForConditionalGeneration)
    return model


def remove_patch(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_patch`, in place; the model is then exactly HF's again."""
    tower = model.vision_tower if isinstance(model, LlavaForConditionalGeneration) else model
    encoder = getattr(getattr(tower, 'vision_model', None), 'encoder', None)
    if not isinstance(encoder, TokenCLIPEncoder):
        return model
    for layer in encoder.layers:
        del layer.token_transform, layer._mmtt
        if type(layer.self_attn) in _UNPATCHED:
            _set_class(layer.self_attn, _UNPATCHED[type(layer.self_attn)])
        _set_class(layer, CLIPEncoderLayer)
    _set_class(encoder, CLIPEncoder)
    if type(model) in _UNPATCHED:
        _set_class(model, _UNPATCHED[type(model)])
    return model
