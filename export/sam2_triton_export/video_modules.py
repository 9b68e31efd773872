"""PyTorch modules that are exported to ONNX for video: what SAM2VideoPredictor runs per frame.

Five pure functions of tensors (layout NCHW / batch first, float32, batch B = objects):

``VideoImageEncoder``: image -> the image encoder's outputs plus ``vision_feat``, the top-level
    feature map *before* ``no_mem_embed`` is added (memory attention and the memory encoder need
    it; the image path drops it).
``MemoryAttention``: ``vision_feat`` + M spatial memories + P object pointers -> the
    memory-conditioned feature map (``_prepare_memory_conditioned_features``' attention part).
    M and P are dynamic. RoPE is rewritten in real arithmetic (ONNX has no complex numbers).
``VideoMaskDecoder``: ``_forward_sam_heads``: prompt encoder + mask decoder, multimask choice
    (runtime flag), object-score suppression, object pointer with no-object handling.
``MemoryEncoder``: ``_encode_new_memory``: low-res mask logits -> memory features, with the
    1024x1024 upsampling, sigmoid (or binarisation) scale/bias and the no-object embedding.
``MaskPrompt``: ``add_new_mask``'s network part: ``mask_downsample`` of the 1024x1024 0/1 mask
    (the decoder's ``mask_input`` for the mask's object pointer in ``_use_mask_as_output``) and
    the constant ``no_obj_ptr`` (the pointer of an empty mask).

Which memories to attend to and their temporal positions is bookkeeping that stays in Python
(the server); the graphs take the result as index/position tensors. The positional encodings
of the current frame and of the memories are sine tables that depend only on the feature size
(SAM2VideoPredictor itself caches ``maskmem_pos_enc`` as a constant); they are baked into the
memory-attention graph instead of being passed per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam2_triton import spec

from .modules import ImageEncoder

NO_OBJ_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE


def rope_tables(freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [N, D/2] of SAM 2's complex ``freqs_cis`` (bit-identical values)."""
    return freqs_cis.real.contiguous().float(), freqs_cis.imag.contiguous().float()


def apply_rotary_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """SAM 2's ``apply_rotary_enc`` in real arithmetic.

    ``x`` [..., N, D] holds D/2 complex numbers per token as interleaved (re, im) pairs;
    ``cos``/``sin`` are [N, D/2]. (a + ib)(c + id) = (ac - bd) + i(ad + bc): the same products
    and sums torch's complex multiply computes, so the result matches to the last bit or so.
    """
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out_re = re * cos - im * sin
    out_im = re * sin + im * cos
    return torch.stack((out_re, out_im), dim=-1).flatten(-2)


class VideoImageEncoder(ImageEncoder):
    """image [B,3,1024,1024] -> the image encoder's outputs + the raw top-level feature map.

    Outputs: image_embed [B,256,64,64] (top level + ``no_mem_embed``: the decoder input of an
    initial conditioning frame, identical to the image path's), high_res_feats_0
    [B,32,256,256] and high_res_feats_1 [B,64,128,128] (after ``conv_s0``/``conv_s1``),
    vision_feat [B,256,64,64] (top level without ``no_mem_embed``: the input of memory
    attention and of the memory encoder), model_fingerprint [B,2] int32. All float32.
    """

    def __init__(
        self, model: nn.Module, fingerprint: tuple[int, int], image_dtype: str = "float32"
    ) -> None:
        super().__init__(model, fingerprint, image_dtype=image_dtype, feature_dtype="float32")

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.to(torch.float32)
        if self.image_dtype == "uint8":
            x = x / 255.0
        x = (x - self.mean) / self.std
        backbone_out = self.model.forward_image(x)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        top = vision_feats[-1]  # [HW, B, C]
        embed = top + self.model.no_mem_embed if self.model.directly_add_no_mem_embed else top
        feats = []
        embed_name, high_res_names = spec.FEATURE_NAMES[0], spec.FEATURE_NAMES[1:]
        names = [*high_res_names, embed_name, embed_name]
        for feat, name in zip([*vision_feats[:-1], embed, top], names):
            c, h, w = spec.FEATURE_SHAPES[name]
            feats.append(feat.permute(1, 2, 0).reshape(-1, c, h, w))
        high_res_0, high_res_1, image_embed, vision_feat = feats
        fingerprint = self.fingerprint.unsqueeze(0).expand(image.shape[0], -1)
        return image_embed, high_res_0, high_res_1, vision_feat, fingerprint


class MemoryAttention(nn.Module):
    """Condition the current frame's features on M spatial memories and P object pointers.

    Inputs:
      vision_feat [B,256,64,64]: the current frame's ``VideoImageEncoder.vision_feat``.
      maskmem_features [B,M,64,64,64]: M >= 1 ``MemoryEncoder`` outputs (any order).
      maskmem_tpos [M] int64: SAM 2's ``t_pos`` of each memory, 0..num_maskmem-1 (0 for
        conditioning frames, ``num_maskmem - t_rel`` for the frame t_rel frames away); the graph
        adds ``maskmem_tpos_enc[num_maskmem - 1 - t_pos]`` to the memory's positional encoding.
      obj_ptrs [B,P,256]: P >= 0 ``VideoMaskDecoder.obj_ptr`` outputs.
      obj_ptr_tpos [P] float32: each pointer's temporal position, SAM 2's
        ``pos / t_diff_max`` (signed frame distance over ``min(num_frames, 16) - 1``).
    Output: pix_feat_with_mem [B,256,64,64].
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        ma = model.memory_attention
        if not ma.batch_first:
            raise ValueError("MemoryAttention with batch_first=False is not supported")
        self.layers = ma.layers
        self.norm = ma.norm
        self.pos_enc_at_input = ma.pos_enc_at_input
        self.hidden_dim = model.hidden_dim
        self.mem_dim = model.mem_dim
        self.num_maskmem = model.num_maskmem
        self.maskmem_tpos_enc = model.maskmem_tpos_enc  # [num_maskmem, 1, 1, mem_dim]
        self.use_obj_ptrs = model.use_obj_ptrs_in_encoder
        self.add_tpos_enc_to_obj_ptrs = model.add_tpos_enc_to_obj_ptrs
        self.tpos_dim = self.hidden_dim if model.proj_tpos_enc_in_obj_ptrs else self.mem_dim
        self.obj_ptr_tpos_proj = model.obj_ptr_tpos_proj
        self.size = model.image_size // model.backbone_stride
        hw = self.size
        with torch.no_grad():  # sine tables: functions of the feature size only
            curr_pos = model.image_encoder.neck.position_encoding(
                torch.zeros(1, self.hidden_dim, hw, hw)
            )
            mem_pos = model.memory_encoder.position_encoding(torch.zeros(1, self.mem_dim, hw, hw))
        self.register_buffer("curr_pos", curr_pos.flatten(2).transpose(1, 2).contiguous())
        self.register_buffer("maskmem_pos", mem_pos.flatten(2).transpose(1, 2).contiguous())
        # One cos/sin table for every RoPE attention (they are all built with the same sizes).
        freqs = [
            a.freqs_cis.cpu()
            for layer in self.layers
            for a in (layer.self_attn, layer.cross_attn_image)
        ]
        if any(not torch.equal(f, freqs[0]) for f in freqs) or freqs[0].shape[0] != hw * hw:
            raise ValueError("RoPE attentions with different tables are not supported")
        cos, sin = rope_tables(freqs[0])
        self.register_buffer("rope_cos", cos)
        self.register_buffer("rope_sin", sin)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate [B, heads, F*HW, d] tokens: each run of HW tokens is one 64x64 frame."""
        b, h, _, d = x.shape
        frames = x.reshape(b, h, -1, self.size * self.size, d)
        return apply_rotary_real(frames, self.rope_cos, self.rope_sin).reshape(b, h, -1, d)

    @staticmethod
    def _heads(x: torch.Tensor, attn: nn.Module) -> torch.Tensor:
        """``Attention._separate_heads`` with a constant head size: ONNX Reshape cannot infer
        a -1 for an empty tensor (zero object pointers)."""
        b, n, _ = x.shape
        head_dim = attn.internal_dim // attn.num_heads
        return x.reshape(b, n, attn.num_heads, head_dim).transpose(1, 2)

    def _attend(self, attn, q, k_rope, k_plain, v_rope, v_plain) -> torch.Tensor:
        """RoPEAttention.forward with the keys given as (rotated part, excluded part)."""
        q = attn._separate_heads(attn.q_proj(q), attn.num_heads)
        k = attn._separate_heads(attn.k_proj(k_rope), attn.num_heads)
        q, k = self._rope(q), self._rope(k)
        if k_plain is not None:
            k_plain = self._heads(attn.k_proj(k_plain), attn)
            k = torch.cat((k, k_plain), dim=2)
            v = torch.cat((v_rope, v_plain), dim=1)
        else:
            v = v_rope
        v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return attn.out_proj(attn._recombine_heads(out))

    def forward(
        self,
        vision_feat: torch.Tensor,
        maskmem_features: torch.Tensor,
        maskmem_tpos: torch.Tensor,
        obj_ptrs: torch.Tensor,
        obj_ptr_tpos: torch.Tensor,
    ) -> torch.Tensor:
        b, c, h, w = vision_feat.shape
        curr = vision_feat.flatten(2).transpose(1, 2)  # [B, HW, C]
        # spatial memories: [B, M*HW, mem_dim]; pos = sine table + temporal encoding
        mem = maskmem_features.flatten(3).transpose(2, 3).flatten(1, 2)
        tpos = self.maskmem_tpos_enc.flatten(1)[self.num_maskmem - 1 - maskmem_tpos]  # [M, mem]
        mem_pos = (self.maskmem_pos.unsqueeze(1) + tpos.unsqueeze(1)).flatten(1, 2)  # [1,M*HW,.]
        ptr = ptr_pos = None
        if self.use_obj_ptrs:
            split = self.hidden_dim // self.mem_dim  # a pointer becomes `split` tokens
            p = obj_ptrs.shape[1]  # no -1 in reshapes: P may be 0
            ptr = obj_ptrs.reshape(b, p * split, self.mem_dim)  # [B, P*split, mem_dim]
            if self.add_tpos_enc_to_obj_ptrs:
                pe = _get_1d_sine_pe(obj_ptr_tpos, self.tpos_dim)
                pe = self.obj_ptr_tpos_proj(pe)  # [P, mem_dim]
                ptr_pos = pe.unsqueeze(1).expand(p, split, self.mem_dim)
                ptr_pos = ptr_pos.reshape(1, p * split, self.mem_dim)
            else:
                ptr_pos = torch.zeros_like(ptr[:1])
        output = curr
        if self.pos_enc_at_input:
            output = output + 0.1 * self.curr_pos
        for layer in self.layers:
            # self-attention
            tgt2 = layer.norm1(output)
            qk = tgt2 + self.curr_pos if layer.pos_enc_at_attn else tgt2
            attn = layer.self_attn
            q = attn._separate_heads(attn.q_proj(qk), attn.num_heads)
            k = attn._separate_heads(attn.k_proj(qk), attn.num_heads)
            v = attn._separate_heads(attn.v_proj(tgt2), attn.num_heads)
            out = F.scaled_dot_product_attention(self._rope(q), self._rope(k), v)
            output = output + attn.out_proj(attn._recombine_heads(out))
            # cross-attention to the memories (RoPE on spatial tokens only)
            tgt2 = layer.norm2(output)
            q = tgt2 + self.curr_pos if layer.pos_enc_at_cross_attn_queries else tgt2
            keys = layer.pos_enc_at_cross_attn_keys
            k_mem = mem + mem_pos if keys else mem
            k_ptr = None if ptr is None else (ptr + ptr_pos if keys else ptr)
            output = output + self._attend(layer.cross_attn_image, q, k_mem, k_ptr, mem, ptr)
            # MLP
            tgt2 = layer.norm3(output)
            output = output + layer.linear2(layer.activation(layer.linear1(tgt2)))
        output = self.norm(output)
        return output.transpose(1, 2).reshape(b, c, h, w)


def _get_1d_sine_pe(pos: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    return get_1d_sine_pe(pos, dim=dim, temperature=temperature)


class VideoMaskDecoder(nn.Module):
    """``_forward_sam_heads`` with the multimask choice as an input.

    Inputs: pix_feat [B,256,64,64] (``image_embed`` on an initial conditioning frame, the
    memory-attention output when tracking, ``vision_feat`` for the pointer of a mask prompt),
    high_res_feats_0 [B,32,256,256], high_res_feats_1 [B,64,128,128], point_coords [B,P,2]
    float32 in the 1024x1024 frame (boxes as two points labelled 2, 3; a frame without clicks
    passes one point (0,0) labelled -1, as SAM 2 does), point_labels [B,P] int32,
    mask_input [B,1,256,256] float32 (previous low-res logits) with has_mask_input [B] float32,
    multimask_output [B] float32 (1: best of tokens 1-3 by IoU, pointer from that token;
    0: token 0, or with ``dynamic_multimask_via_stability`` the best multimask token when token
    0 is unstable, pointer from token 0).
    Outputs: low_res_masks [B,1,256,256] (``NO_OBJ_SCORE`` where no object is predicted),
    obj_ptr [B,256], object_score_logits [B,1].
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.obj_ptr_proj = model.obj_ptr_proj
        self.pred_obj_scores = model.pred_obj_scores
        self.soft_no_obj_ptr = model.soft_no_obj_ptr
        self.fixed_no_obj_ptr = model.fixed_no_obj_ptr
        self.no_obj_ptr = getattr(model, "no_obj_ptr", None)

    def forward(
        self,
        pix_feat: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        md = self.mask_decoder
        sparse = self.prompt_encoder._embed_points(
            point_coords, point_labels.to(torch.float32), pad=True
        )
        masked = self.prompt_encoder.mask_downscaling(mask_input)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(masked)
        dense = torch.where(has_mask_input.reshape(-1, 1, 1, 1) > 0.5, masked, no_mask)
        masks, ious, tokens, object_score_logits = md.predict_masks(
            image_embeddings=pix_feat,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        best = torch.argmax(ious[:, 1:], dim=-1) + 1  # best multimask token, 1..3
        zero = torch.zeros_like(best)
        single = zero
        if md.dynamic_multimask_via_stability:
            stable = md._get_stability_scores(masks[:, 0:1])[:, 0]
            single = torch.where(stable >= md.dynamic_multimask_stability_thresh, zero, best)
        multi = multimask_output > 0.5
        mask_idx = torch.where(multi, best, single)
        token_idx = torch.where(multi, best, zero) if md.use_multimask_token_for_obj_ptr else zero
        h, w = masks.shape[-2:]
        low = torch.gather(masks, 1, mask_idx.reshape(-1, 1, 1, 1).expand(-1, 1, h, w))
        token = torch.gather(
            tokens, 1, token_idx.reshape(-1, 1, 1).expand(-1, 1, tokens.shape[-1])
        ).squeeze(1)
        obj_ptr = self.obj_ptr_proj(token)
        if self.pred_obj_scores:
            is_obj = object_score_logits > 0
            low = torch.where(is_obj[:, None, None], low, NO_OBJ_SCORE)
            lam = object_score_logits.sigmoid() if self.soft_no_obj_ptr else is_obj.float()
            if self.fixed_no_obj_ptr:
                obj_ptr = lam * obj_ptr
            obj_ptr = obj_ptr + (1 - lam) * self.no_obj_ptr
        return low.float(), obj_ptr, object_score_logits


class MemoryEncoder(nn.Module):
    """``_encode_new_memory`` on low-res mask logits.

    Inputs: vision_feat [B,256,64,64] (``VideoImageEncoder.vision_feat``), pred_masks
    [B,1,256,256] low-res logits (``VideoMaskDecoder.low_res_masks``; upsampled to 1024x1024
    bilinearly as SAM 2 does), object_score_logits [B,1], binarize_mask [B] float32 (1: the
    mask came from clicks and the model binarises such masks, i.e. SAM2VideoPredictor's
    ``binarize_mask_from_pts_for_mem_enc and is_mask_from_pts``; 0: sigmoid).
    Output: maskmem_features [B,64,64,64]. (SAM2VideoPredictor stores it as bfloat16.)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.image_size = model.image_size
        self.scale = model.sigmoid_scale_for_mem_enc
        self.bias = model.sigmoid_bias_for_mem_enc
        self.no_obj_embed_spatial = model.no_obj_embed_spatial

    def forward(
        self,
        vision_feat: torch.Tensor,
        pred_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize_mask: torch.Tensor,
    ) -> torch.Tensor:
        high_res = F.interpolate(
            pred_masks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        mask = torch.where(
            binarize_mask.reshape(-1, 1, 1, 1) > 0.5,
            (high_res > 0).float(),
            torch.sigmoid(high_res),
        )
        if self.scale != 1.0:
            mask = mask * self.scale
        if self.bias != 0.0:
            mask = mask + self.bias
        feats = self.memory_encoder(vision_feat, mask, skip_mask_sigmoid=True)["vision_features"]
        if self.no_obj_embed_spatial is not None:
            is_obj = (object_score_logits > 0).float()
            feats = feats + (1 - is_obj[..., None, None]) * self.no_obj_embed_spatial[
                ..., None, None
            ].expand(*feats.shape)
        return feats


class MaskPrompt(nn.Module):
    """``add_new_mask``: what ``_use_mask_as_output`` needs from the weights.

    Input: mask [B,1,1024,1024] float32 (0/1: the prompt mask resized to the model frame).
    Outputs: mask_downsampled [B,1,256,256] = ``model.mask_downsample(mask)`` (a 4x4 stride-4
    conv; fed to ``VideoMaskDecoder`` as ``mask_input`` with ``has_mask_input`` 1 and no clicks,
    its ``obj_ptr`` is the mask's pointer) and no_obj_ptr [256] = ``model.no_obj_ptr`` (a
    constant of the weights; zeros when the model has none), which the server mixes in for an
    empty mask exactly as ``_use_mask_as_output`` does. The antialiased low-res mask SAM 2 also
    builds there is plain arithmetic on the input and stays in the server.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "mask_downsample", None) is None:
            raise ValueError("the model has no mask_downsample (use_mask_input_as_output...)")
        self.mask_downsample = model.mask_downsample
        ptr = getattr(model, "no_obj_ptr", None)
        if ptr is None:
            ptr = torch.zeros(model.hidden_dim)
        self.register_buffer("no_obj_ptr", ptr.detach().reshape(-1).clone().float())

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # exported as an initializer behind an Identity (video_export._name_constant_outputs)
        return self.mask_downsample(mask), self.no_obj_ptr.clone()
