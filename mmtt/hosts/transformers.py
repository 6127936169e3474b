"""Token Transforming for Hugging Face ``transformers``: CLIP vision encoders and LLaVA-1.5.

:func:`apply_patch` takes a ``CLIPVisionModel`` or a ``LlavaForConditionalGeneration`` (the
``llava-hf/llava-1.5-7b-hf`` layout) and reduces tokens in the CLIP encoder layers, between
attention and MLP (Fig. 3), the class token never reduced. Layers after a reduction add
``log s`` to their attention logits as the ``attention_mask`` HF's SDPA attention already
takes, so unreduced layers run HF's own code on the fused kernel.

The encoder runs its layers itself (:class:`TokenCLIPEncoder` restates HF's loop) because each
layer takes and returns the forward's :class:`~mmtt.modules.state.TokenState`: nothing about a
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
import inspect
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ..compat import check_versions

check_versions('transformers')

import torch
import torch.utils.checkpoint as cp
import transformers
from packaging.version import Version
from torch import Tensor, nn
from transformers import CLIPVisionModel, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.clip import modeling_clip
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoder, CLIPEncoderLayer

from ..functional import size_bias
from ..functional.visual_tokens import prumerge_matrix, visionzip_matrix, visionzip_split
from ..modules import TokenTransform
from .adapter import (
    BlockSettings,
    Capture,
    Captured,
    TokenState,
    attend,
    patch_settings,
    reduce_tokens,
    reduces,
    start_state,
    swap_class,
)
from .adapter import remove_patch as host_remove_patch

# transformers 5 runs CLIP's attention through one class (the kernel chosen by the config),
# records hidden states and attentions with hooks on the layers, has no CLIPVisionTransformer
# (CLIPVisionModel holds the encoder) and moves LLaVA's parts into LlavaModel.
V5 = Version(transformers.__version__).major >= 5
CLIPSdpaAttention = getattr(modeling_clip, 'CLIPSdpaAttention', None)
LlavaModel = getattr(transformers, 'LlavaModel', None) if V5 else None

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
# Layers a visual_tokens budget reduces after when neither reduce_layers nor a schedule is given.
BUDGET_LAYERS = SCHEDULES['llava-1.5/32']['reduce_layers']

# PruMerge's capture: class attention of one head over all channels (their q k^T C^-1/2 on the
# concatenated heads) and the concatenated keys, from the projections alone.
ONE_HEAD_CLS = 'one_head_cls'


class VisualTokenMethod(NamedTuple):
    """A LLaVA-only reduction (W form, :mod:`mmtt.functional.visual_tokens`) applied once to
    the feature layer's output. ``scorer``: ``'own'`` (that layer's attention: class attention
    and head-averaged keys) or ``'next'`` (the next layer's projections of the output)."""
    name: str
    scorer: str
    summary: str


VISUAL_TOKEN_METHODS: Dict[str, VisualTokenMethod] = {m.name: m for m in (
    VisualTokenMethod('prumerge', 'next', 'PruMerge: class-attention outliers, each merged with its '
                      '32 key-nearest tokens, plus one token for the rest'),
    VisualTokenMethod('prumerge+', 'next', 'PruMerge+: PruMerge with spatially uniform samples'),
    VisualTokenMethod('visionzip', 'own', 'VisionZip: dominant tokens by class attention plus '
                      'contextual tokens merged by key similarity'),
)}


class VisualTokenReduction(nn.Module):
    """The reduction of a :data:`VISUAL_TOKEN_METHODS` entry at the feature layer (no
    parameters): M output tokens besides the class token, whatever the input count."""

    def __init__(self, method: str, num_tokens: int, contextual: Optional[int] = None) -> None:
        super().__init__()
        self.method = method
        self.num_tokens = int(num_tokens)
        if method == 'visionzip':
            dominant, default = visionzip_split(self.num_tokens)
            self.contextual = default if contextual is None else int(contextual)
            self.dominant = self.num_tokens - self.contextual
        elif contextual is not None:
            raise ValueError(f"contextual={contextual} applies only to method='visionzip'")

    def num_keep(self, num_tokens: int) -> int:
        return min(int(num_tokens), self.num_tokens)

    def matrix(self, captured: Captured):
        """W from what the scoring attention captured (class token included in both)."""
        if self.method == 'visionzip':
            return visionzip_matrix(captured.scores[:, 1:], captured.keys, self.dominant, self.contextual)
        return prumerge_matrix(captured.keys[:, 1:], captured.scores, self.num_tokens - 1,
                               plus=self.method == 'prumerge+')

    def extra_repr(self) -> str:
        extra = f', dominant={self.dominant}, contextual={self.contextual}' if self.method == 'visionzip' else ''
        return f'method={self.method!r}, num_tokens={self.num_tokens}{extra}'


class _CapturingAttention:
    """Mixed before HF's CLIP attention: with ``capture`` (a
    :class:`~mmtt.hosts.adapter.Capture`) it restates HF's forward (the same projections)
    around :func:`mmtt.hosts.adapter.attend` and returns ``(out, None, Captured)`` (None where
    HF returns attention weights, so transformers 5's attention recorder skips it). With
    ``Capture(ONE_HEAD_CLS)`` it returns ``(None, None, Captured)`` from the projections only:
    PruMerge's one-head class attention ``[B, N - 1]`` (softmax over all N keys) and the keys
    ``[B, N, C]`` of all heads."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, *args,
                capture: Optional[Capture] = None, **kwargs):
        if capture is None:
            return super().forward(hidden_states, attention_mask, *args, **kwargs)
        b, n, c = hidden_states.shape
        if capture.scores == ONE_HEAD_CLS:
            q, k = self.q_proj(hidden_states[:, :1]), self.k_proj(hidden_states)
            logits = (q @ k.transpose(1, 2))[:, 0] * c ** -0.5
            work = torch.promote_types(logits.dtype, torch.float32)
            return None, None, Captured(logits.to(work).softmax(dim=-1)[:, 1:].to(k.dtype), k)
        q, k, v = (proj(hidden_states).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out, captured = attend(q, k, v, attention_mask, capture,
                               dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.embed_dim)), None, captured


class TokenCLIPAttention(_CapturingAttention, CLIPAttention):
    """HF's CLIP attention (eager in 4.51; every kernel in 5), also returning what a reduction needs."""


if CLIPSdpaAttention is not None:
    class TokenCLIPSdpaAttention(_CapturingAttention, CLIPSdpaAttention):
        """HF 4.51's SDPA attention of CLIP, also returning what a reduction needs."""


class TokenCLIPEncoderLayer(CLIPEncoderLayer):
    """HF's ``CLIPEncoderLayer`` that takes and returns the forward's :class:`TokenState`,
    applies the size bias, and reduces tokens between attention and MLP where it has a
    transform (a :class:`VisualTokenReduction` reduces the layer's output instead, scored by
    its own attention or by ``following``, the next layer). Returns ``(hidden states, HF's
    attention weights or None, state)``; a reducing layer's attention weights are None."""
    token_transform: Optional[nn.Module]
    _mmtt: BlockSettings

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, *args,
                state: Optional[TokenState] = None, following: Optional[nn.Module] = None,
                **kwargs) -> Tuple[Tensor, Optional[Tensor], TokenState]:
        state = state or TokenState()
        n = hidden_states.shape[1]
        bias = size_bias(state.sizes, hidden_states.dtype)   # [B, 1, 1, N]
        if bias is not None:
            # 4.51's eager attention checks [B, 1, N, N]; 5's kernels broadcast.
            output_attentions = len(args) > 1 and bool(args[1])
            if not V5 and (output_attentions or not isinstance(self.self_attn, CLIPSdpaAttention)):
                bias = bias.expand(-1, -1, n, -1)
            attention_mask = bias if attention_mask is None else attention_mask + bias
        transform, settings = self.token_transform, self._mmtt
        if isinstance(transform, VisualTokenReduction):
            return self._reduce_output(hidden_states, attention_mask, state, following, transform,
                                       *args, **kwargs)
        if not reduces(transform, n - settings.num_prefix):
            out = super().forward(hidden_states, attention_mask, *args, **kwargs)
            if isinstance(out, Tensor):   # transformers 5
                return out, None, state
            return out[0], (out[1] if len(out) > 1 else None), state
        # HF's CLIPEncoderLayer.forward, with the reduction between attention and MLP.
        attended, _, captured = self.self_attn(self.layer_norm1(hidden_states), attention_mask,
                                               capture=Capture.of(transform, keys=settings.keys))
        x, state = reduce_tokens(hidden_states + attended, state, transform, None,
                                 settings.num_prefix, captured)
        x = x + self.mlp(self.layer_norm2(x))
        return x, None, state

    def _reduce_output(self, x: Tensor, attention_mask: Optional[Tensor], state: TokenState,
                       following: Optional[nn.Module], reduction: VisualTokenReduction, *args,
                       **kwargs) -> Tuple[Tensor, None, TokenState]:
        if VISUAL_TOKEN_METHODS[reduction.method].scorer == 'own':
            # HF's CLIPEncoderLayer.forward with the attention capturing class attention and keys.
            attended, _, captured = self.self_attn(self.layer_norm1(x), attention_mask,
                                                   capture=Capture('cls', keys=True))
            x = x + attended
            x = x + self.mlp(self.layer_norm2(x))
            matrix = reduction.matrix(captured)
            y = matrix.apply(x)   # the class token is W's row 0 too: VisionZip sends it on
        else:
            out = super().forward(x, attention_mask, *args, **kwargs)
            x = out if isinstance(out, Tensor) else out[0]
            _, _, captured = following.self_attn(following.layer_norm1(x), None,
                                                 capture=Capture(ONE_HEAD_CLS))
            matrix = reduction.matrix(captured)
            y = matrix.apply(x[:, 1:])
        # No size bias after: the language model reads these tokens as the authors' code does.
        return torch.cat([x[:, :1], y], dim=1), None, TokenState()


class TokenCLIPEncoder(CLIPEncoder):
    """HF's ``CLIPEncoder`` whose loop (restated from HF's forward) hands the token state from
    layer to layer. The hidden states it returns have each layer's own token count."""

    def forward(self, inputs_embeds: Tensor, attention_mask: Optional[Tensor] = None, *args, **kwargs):
        causal = args[0] if args else kwargs.pop('causal_attention_mask', None)
        if attention_mask is not None or causal is not None:
            # A [B, 1, N, N] mask cannot follow the tokens through a reduction; CLIP's vision
            # tower never passes one.
            raise ValueError('attention_mask and causal_attention_mask must be None in a patched '
                             'CLIP vision encoder')
        if V5:   # hidden states and attentions are recorded by HF's hooks on the layers
            hidden_states, state = inputs_embeds, self._start_state(inputs_embeds)
            for i, layer in enumerate(self.layers):
                hidden_states, _, state = layer(hidden_states, None, state=state,
                                                following=self._following(i), **kwargs)
            return BaseModelOutput(last_hidden_state=hidden_states)
        return self._forward_451(inputs_embeds, *args[1:], **kwargs)

    def _start_state(self, inputs_embeds: Tensor) -> TokenState:
        # The patch grid of the configured image size (another size gives no grid).
        side = self.config.image_size // self.config.patch_size
        return start_state(inputs_embeds, 1, (side, side))

    def _following(self, i: int) -> Optional[nn.Module]:
        return self.layers[i + 1] if i + 1 < len(self.layers) else None

    def _forward_451(self, inputs_embeds: Tensor, output_attentions: Optional[bool] = None,
                     output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        encoder_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        hidden_states, state = inputs_embeds, self._start_state(inputs_embeds)
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                encoder_states = encoder_states + (hidden_states,)
            if self.gradient_checkpointing and self.training:
                # Non-reentrant (HF's default function is reentrant): the state goes in and out.
                hidden_states, weights, state = cp.checkpoint(
                    layer, hidden_states, None, None, output_attentions, state=state,
                    following=self._following(i), use_reentrant=False)
            else:
                hidden_states, weights, state = layer(hidden_states, None, None, output_attentions,
                                                      state=state, following=self._following(i))
            if output_attentions:
                all_attentions = all_attentions + (weights,)
        if output_hidden_states:
            encoder_states = encoder_states + (hidden_states,)
        out = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=encoder_states,
                              attentions=all_attentions)
        return out if return_dict is not False else out.to_tuple()


class ShortInputs(NamedTuple):
    """What :func:`shorten_inputs` returns: the language model's inputs with M placeholders per
    image (``[B, L']`` each, None where the caller gave None) and ``keep [B, L]``, which
    positions of the caller's ``input_ids`` survive."""
    input_ids: Tensor
    attention_mask: Optional[Tensor]
    position_ids: Optional[Tensor]
    labels: Optional[Tensor]
    keep: Tensor


class _ShortPrompt:
    """Mixed before HF's LLaVA classes: the prompt loses the placeholders of the visual tokens
    the patched vision tower removed. ``forward`` is HF's, called on the shortened inputs; its
    logits (and cache) are those of the shortened sequence."""

    def visual_tokens(self, num_patches: int, vision_feature_layer: Union[int, List[int], None] = None,
                      vision_feature_select_strategy: Optional[str] = None) -> int:
        """Tokens per image the projector receives, for ``num_patches`` patches (576 for
        LLaVA-1.5), under the model's configured feature layer and strategy unless given."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = (self.config.vision_feature_select_strategy if vision_feature_select_strategy is None
                    else vision_feature_select_strategy)
        counts = _hidden_state_tokens(_vision_root(_llava_tower(self)).encoder, num_patches)
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
        patch = _vision_root(_llava_tower(self)).embeddings.patch_size
        num_patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        full = num_patches + (0 if strategy == 'default' else 1)
        kept = self.visual_tokens(num_patches, vision_feature_layer, strategy)
        return _shorten(input_ids, _image_token(self.config), pixel_values.shape[0], full,
                        kept, attention_mask, position_ids, labels, _pad_id(self))

    def forward(self, input_ids: Optional[Tensor] = None, pixel_values: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                **kwargs):
        """HF's forward (same arguments, by keyword after ``position_ids``) on the shortened inputs."""
        if input_ids is not None and pixel_values is not None:
            short = self.shorten_inputs(input_ids, pixel_values, attention_mask, position_ids,
                                        kwargs.get('labels'), kwargs.get('vision_feature_layer'),
                                        kwargs.get('vision_feature_select_strategy'))
            if short is not None:
                input_ids, attention_mask, position_ids = short[:3]
                if kwargs.get('labels') is not None:
                    kwargs['labels'] = short.labels
                cache_position = kwargs.get('cache_position')
                if cache_position is not None:   # the prompt's slots in the cache, now fewer
                    kwargs['cache_position'] = cache_position[0] + torch.arange(
                        input_ids.shape[1], device=cache_position.device)
        return super().forward(input_ids=input_ids, pixel_values=pixel_values,
                               attention_mask=attention_mask, position_ids=position_ids, **kwargs)


def _forward_like(hf_class: type):
    """:meth:`_ShortPrompt.forward` showing ``hf_class.forward``'s signature: ``generate``
    reads it to decide which inputs (``logits_to_keep``, the cache) it passes."""
    def forward(self, *args, **kwargs):
        return _ShortPrompt.forward(self, *args, **kwargs)
    forward.__signature__ = inspect.signature(hf_class.forward)
    forward.__doc__ = _ShortPrompt.forward.__doc__
    return forward


class TokenLlavaForConditionalGeneration(_ShortPrompt, LlavaForConditionalGeneration):
    """HF's LLaVA whose prompt loses the placeholders of the visual tokens its patched vision
    tower removed. ``forward`` and ``generate`` are HF's, called on the shortened inputs; the
    logits (and ``past_key_values``) of ``forward`` are those of the shortened sequence."""

    forward = _forward_like(LlavaForConditionalGeneration)

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


if LlavaModel is not None:
    class TokenLlavaModel(_ShortPrompt, LlavaModel):
        """transformers 5's ``LlavaModel`` (no language-model head) on the shortened inputs."""
        forward = _forward_like(LlavaModel)


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
    if not isinstance(model, _ShortPrompt):
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
    candidates = (getattr(model.config, 'pad_token_id', None), model.config.text_config.pad_token_id, 0, 1)
    return next(i for i in candidates if i is not None and i >= 0 and i != _image_token(model.config))


def _image_token(config) -> int:
    """The image placeholder id (``image_token_id`` in transformers 5, ``image_token_index`` in 4.51)."""
    token = getattr(config, 'image_token_id', None)
    return config.image_token_index if token is None else token


def _vision_root(tower: nn.Module) -> nn.Module:
    """What holds ``embeddings`` and ``encoder``: 4.51's ``CLIPVisionTransformer``
    (``tower.vision_model``), or the ``CLIPVisionModel`` itself in transformers 5."""
    return getattr(tower, 'vision_model', tower)


def _llava_tower(llava: nn.Module) -> nn.Module:
    """The vision tower of a LLaVA (4.51: an attribute; 5: of its ``LlavaModel``)."""
    inner = getattr(llava, 'model', None)
    return inner.vision_tower if isinstance(inner, nn.Module) else llava.vision_tower


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
_ATTENTION = {CLIPAttention: TokenCLIPAttention}
if CLIPSdpaAttention is not None:
    _ATTENTION[CLIPSdpaAttention] = TokenCLIPSdpaAttention
_LLAVAS = {LlavaForConditionalGeneration: TokenLlavaForConditionalGeneration}
if LlavaModel is not None:
    _LLAVAS[LlavaModel] = TokenLlavaModel

def _vision_parts(model: nn.Module):
    """``(vision root, its encoder, the LLaVA or None)`` of a supported model."""
    if isinstance(model, _ShortPrompt) or (
            isinstance(model, CLIPVisionModel)
            and isinstance(_vision_root(model).encoder, TokenCLIPEncoder)):
        raise ValueError('model is already patched; call remove_patch(model) first')
    if type(model) in _LLAVAS:
        tower = _llava_tower(model)
        if type(tower) is not CLIPVisionModel:
            raise ValueError(f'vision_tower is {type(tower).__name__}; apply_patch supports a LLaVA '
                             'whose vision tower is a CLIPVisionModel')
        return _vision_root(tower), _vision_root(tower).encoder, model
    if type(model) is CLIPVisionModel:
        return _vision_root(model), _vision_root(model).encoder, None
    names = ' or '.join(cls.__name__ for cls in _LLAVAS)
    raise ValueError(f'model must be a {names} or a CLIPVisionModel, got {type(model).__name__}')


def _feature_depth(llava: nn.Module, depth: int) -> int:
    """Index into ``hidden_states`` (0: embeddings, i + 1: output of layer i) of the first
    feature layer LLaVA reads."""
    layer = llava.config.vision_feature_layer
    picks = [layer] if isinstance(layer, int) else list(layer)
    bad = [i for i in picks if not isinstance(i, int) or not -(depth + 1) <= i <= depth]
    if bad:
        raise ValueError(f'vision_feature_layer={layer!r} is out of range for a vision tower '
                         f'with {depth} layers')
    return min(i % (depth + 1) for i in picks)


def _budget_keep_ratio(method: str, visual_tokens: int, num_patches: int, layers: Sequence[int],
                       offset: int) -> float:
    """The keep ratio whose reductions after ``layers`` leave ``visual_tokens - offset`` patch
    tokens of ``num_patches`` (bisection: the count only grows with the ratio)."""
    target = visual_tokens - offset

    def count(ratio: float) -> int:
        transform, n = TokenTransform(keep_ratio=ratio, method=method), num_patches
        for _ in layers:
            n = transform.num_keep(n)
        return n
    low, high = max(transform_floor(method), 1e-9), 1.0
    if not count(low) <= target <= count(high):
        raise ValueError(f'visual_tokens={visual_tokens} is out of reach: method={method!r} '
                         f'after {len(layers)} reduction(s) leaves {count(low) + offset} to '
                         f'{count(high) + offset} tokens of {num_patches + offset}')
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if count(mid) < target else (low, mid)
    if count(high) != target:
        raise ValueError(f'visual_tokens={visual_tokens} cannot be met exactly by method='
                         f'{method!r} with {len(layers)} reduction(s) of one keep ratio; '
                         'give other reduce_layers or a neighbouring budget')
    return high


def transform_floor(method: str) -> float:
    """The lowest keep ratio ``method`` accepts in one step."""
    from ..modules.methods import method_spec
    return method_spec(method).min_keep_ratio


def apply_patch(model: nn.Module, method: Optional[str] = None, keep_ratio: float = 0.7,
                reduce_layers: Optional[Sequence[int]] = None, kappa: Optional[float] = None,
                tau: Optional[float] = None, metric: Optional[str] = None,
                preset: Optional[str] = None, schedule: Optional[str] = None,
                layers: Optional[Sequence[int]] = None, visual_tokens: Optional[int] = None,
                contextual: Optional[int] = None, **transform_kwargs) -> nn.Module:
    """Insert token reduction into a HF CLIP vision encoder, in place.

    Args:
        model: a ``LlavaForConditionalGeneration`` (or, with transformers 5, a ``LlavaModel``)
            with a ``CLIPVisionModel`` tower (LLaVA-1.5), or a bare ``CLIPVisionModel``;
            attention ``'sdpa'`` or ``'eager'``.
        method: ``'transform'`` (the default), ``'tome'``, ``'evit'``, ``'prune'``, or for a
            LLaVA one of :data:`VISUAL_TOKEN_METHODS` (``'prumerge'``, ``'prumerge+'``,
            ``'visionzip'``: one reduction of the feature layer's output, as their authors'
            code; ``reduce_layers`` and the Token Transforming options do not apply).
        keep_ratio: fraction of patch tokens kept at each reduction (the LLaVA-only methods:
            of the feature layer's patch tokens, once).
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
        visual_tokens: LLaVA only: the visual tokens per image the language model receives
            (e.g. 64, 128, 192), instead of ``keep_ratio``. For the Token Transforming methods
            the keep ratio is derived so the reductions after ``reduce_layers`` (default: the
            ``'llava-1.5/32'`` schedule's layers) leave exactly that many.
        contextual: ``'visionzip'`` only: contextual tokens among the budget (default: the
            authors' proportion, 10 of 64).
        **transform_kwargs: other :class:`mmtt.TokenTransform` arguments (``selection``,
            ``similarity``, ``orphans``, ``top_k``, ``score_stride``).

    Returns:
        The same model object, patched.
    """
    if 'recover' in transform_kwargs:
        raise ValueError(f"recover={transform_kwargs['recover']!r}: the transformers host hands the "
                         'reduced tokens on (LLaVA\'s language model reads them); recovery of every '
                         'token is an option of the timm, LV-ViT and dense OpenMMLab hosts')
    vision, encoder, llava = _vision_parts(model)
    depth = len(encoder.layers)
    for i, layer in enumerate(encoder.layers):
        if type(layer) is not CLIPEncoderLayer or type(layer.self_attn) not in _ATTENTION:
            raise ValueError(f'layer {i} is {type(layer).__name__} with '
                             f'{type(layer.self_attn).__name__} (attn_implementation='
                             f'{vision.config._attn_implementation!r}); apply_patch supports '
                             "CLIPEncoderLayer with 'sdpa' or 'eager' attention")
    if visual_tokens is not None and llava is None:
        raise ValueError('visual_tokens applies to a LLaVA; give keep_ratio for a CLIPVisionModel')
    if visual_tokens is not None and (isinstance(visual_tokens, bool) or not isinstance(visual_tokens, int)
                                      or visual_tokens < 1):
        raise ValueError(f'visual_tokens={visual_tokens!r} must be a positive int')
    if method in VISUAL_TOKEN_METHODS:
        transforms, patched_attention = _visual_token_patch(
            llava, depth, method, keep_ratio, visual_tokens, contextual,
            dict(reduce_layers=reduce_layers, layers=layers, kappa=kappa, tau=tau, metric=metric,
                 preset=preset, schedule=schedule, **transform_kwargs))
        keys = False
    else:
        if contextual is not None:
            raise ValueError(f"contextual={contextual} applies only to method='visionzip'")
        if visual_tokens is not None:
            keep_ratio, reduce_layers, layers, schedule = _budget(
                llava, depth, visual_tokens, method, preset, reduce_layers, layers, schedule)
        patch = patch_settings(SCHEDULES, depth, f'a vision tower with {depth} layers', method=method,
                               keep_ratio=keep_ratio, reduce_layers=reduce_layers, kappa=kappa,
                               tau=tau, metric=metric, preset=preset, schedule=schedule,
                               layers=layers, transform_kwargs=transform_kwargs)
        key, reduce_layers, keys = patch.key, patch.reduce_layers, patch.keys
        if llava is not None:
            first = _feature_depth(llava, depth)
            late = [i for i in reduce_layers if i >= first]
            if late:
                raise ValueError(f'{key}={late} come after the feature layer: vision_feature_layer='
                                 f'{llava.config.vision_feature_layer!r} reads the output of layer '
                                 f'{first - 1}, so reductions must be in layers 0-{first - 1}')
        transforms = dict(enumerate(patch.layer_transforms(depth)))
        patched_attention = set(reduce_layers)
    block_settings = BlockSettings(num_prefix=1, recovery=None, keys=keys)
    for i, layer in enumerate(encoder.layers):
        swap_class(layer, TokenCLIPEncoderLayer, token_transform=transforms.get(i), _mmtt=block_settings)
        if i in patched_attention:
            swap_class(layer.self_attn, _ATTENTION[type(layer.self_attn)])
    swap_class(encoder, TokenCLIPEncoder)
    if llava is not None:
        swap_class(llava, _LLAVAS[type(llava)])
    return model


def _num_patches(llava: nn.Module) -> int:
    vision = llava.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def _budget(llava: nn.Module, depth: int, visual_tokens: int, method: Optional[str],
            preset: Optional[str], reduce_layers, layers, schedule):
    """``(keep_ratio, reduce_layers, layers, schedule)`` for a ``visual_tokens`` budget of a
    Token Transforming method: the schedule's (or the given, or :data:`BUDGET_LAYERS`) layers
    and the keep ratio that leaves exactly that many tokens."""
    if preset in SCHEDULES and schedule is None:
        schedule = preset
    if schedule is not None:
        if schedule not in SCHEDULES:
            raise ValueError(f'unknown schedule={schedule!r}; choose one of {sorted(SCHEDULES)}')
        reduce_layers = SCHEDULES[schedule]['reduce_layers']
    elif layers is None and reduce_layers is None:
        reduce_layers = BUDGET_LAYERS
    chosen = layers if layers is not None else reduce_layers
    resolved = TokenTransform(method=method, preset=None if preset in SCHEDULES else preset).method
    offset = 0 if llava.config.vision_feature_select_strategy == 'default' else 1
    ratio = _budget_keep_ratio(resolved, visual_tokens, _num_patches(llava),
                               list(chosen) if isinstance(chosen, (list, tuple)) else [chosen], offset)
    return ratio, (None if layers is not None else tuple(reduce_layers)), layers, None


def _visual_token_patch(llava: Optional[nn.Module], depth: int, method: str, keep_ratio: float,
                        visual_tokens: Optional[int], contextual: Optional[int], others: dict):
    """The transforms (layer -> module) and the layers whose attention captures, for a
    :data:`VISUAL_TOKEN_METHODS` entry."""
    if llava is None:
        raise ValueError(f'method={method!r} reduces a LLaVA\'s visual tokens; a CLIPVisionModel '
                         'takes the Token Transforming methods')
    given = {k: v for k, v in others.items() if v is not None}
    if given:
        key, value = next(iter(given.items()))
        raise ValueError(f'{key}={value!r} does not apply to method={method!r} (one reduction at '
                         'the feature layer, as its authors\' code)')
    layer = llava.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f'method={method!r} needs one feature layer, got vision_feature_layer={layer!r}')
    reducing = _feature_depth(llava, depth) - 1
    if reducing < 0:
        raise ValueError(f'method={method!r} cannot reduce the embeddings (vision_feature_layer={layer})')
    num_patches = _num_patches(llava)
    offset = 0 if llava.config.vision_feature_select_strategy == 'default' else 1
    if visual_tokens is None:
        if not 0 < keep_ratio <= 1:
            raise ValueError(f'keep_ratio={keep_ratio} must be in (0, 1]')
        tokens = max(2, round(keep_ratio * num_patches))
    else:
        tokens = visual_tokens - offset
    low = 2 if method != 'visionzip' else 1
    if not low <= tokens <= num_patches - (method != 'visionzip'):
        raise ValueError(f'visual_tokens={tokens + offset} is out of reach for method={method!r}: '
                         f'{low + offset} to {num_patches - 1 + offset} of {num_patches} patches')
    scorer = VISUAL_TOKEN_METHODS[method].scorer
    if scorer == 'next' and reducing + 1 >= depth:
        raise ValueError(f'method={method!r} scores with the layer after the feature layer; '
                         f'vision_feature_layer={layer} reads the last layer')
    reduction = VisualTokenReduction(method, tokens, contextual)
    return {reducing: reduction}, {reducing + 1 if scorer == 'next' else reducing}


def remove_patch(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_patch`, in place; the model is then exactly HF's again
    (:func:`mmtt.remove_patch`, which undoes any host's patch)."""
    return host_remove_patch(model)
