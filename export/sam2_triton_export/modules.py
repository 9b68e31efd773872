"""PyTorch modules that are exported to ONNX: what SAM2ImagePredictor computes, split in two.

``ImageEncoder``: normalised image -> the three feature maps ``set_image`` stores.
``PromptDecoder``: one image's features + N prompts -> logits of all four mask tokens, IoU
predictions, object-score logits. Token selection (multimask / stability) and resizing to the
image size stay in the client: data-dependent selection and arbitrary-size resizes are where
TensorRT conversions break.
"""

from __future__ import annotations

import torch
from torch import nn

from sam2_triton import spec

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}


class ImageEncoder(nn.Module):
    """image [B,3,1024,1024] (float in [0,1], or uint8 in [0,255]) -> features + fingerprint.

    Outputs: image_embed [B,256,64,64], high_res_feats_0 [B,32,256,256],
    high_res_feats_1 [B,64,128,128] (``feature_dtype``), model_fingerprint [B,2] int32.
    """

    def __init__(
        self,
        model: nn.Module,
        fingerprint: tuple[int, int],
        image_dtype: str = "float32",
        feature_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.model = model
        self.image_dtype = image_dtype
        self.feature_dtype = _TORCH_DTYPES[feature_dtype]
        self.register_buffer("mean", torch.tensor(spec.PIXEL_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.PIXEL_STD).view(1, 3, 1, 1))
        self.register_buffer("fingerprint", torch.tensor(fingerprint, dtype=torch.int32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.to(torch.float32)
        if self.image_dtype == "uint8":
            x = x / 255.0
        x = (x - self.mean) / self.std  # torchvision Normalize: sub then div, same order
        backbone_out = self.model.forward_image(x)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        # vision_feats: [HW, B, C] for the 256x256, 128x128 and 64x64 levels
        feats = []
        for feat, name in zip(vision_feats, spec.FEATURE_NAMES[1:] + spec.FEATURE_NAMES[:1]):
            c, h, w = spec.FEATURE_SHAPES[name]
            feats.append(feat.permute(1, 2, 0).reshape(-1, c, h, w).to(self.feature_dtype))
        high_res_0, high_res_1, image_embed = feats
        fingerprint = self.fingerprint.unsqueeze(0).expand(image.shape[0], -1)
        return image_embed, high_res_0, high_res_1, fingerprint


class PromptDecoder(nn.Module):
    """One image's features and N prompts -> all four mask tokens' low-res logits.

    Inputs: image_embed [1,256,64,64], high_res_feats_0 [1,32,256,256],
    high_res_feats_1 [1,64,128,128] (float32 or float16), point_coords [N,P,2] float32 in the
    1024x1024 input frame, point_labels [N,P] int32 in {0,1,2,3} (-1 allowed), mask_input
    [M,1,256,256] float32 and has_mask_input [M] float32 with M in {1, N}.
    Outputs: low_res_masks [N,4,256,256], iou_predictions [N,4], object_score_logits [N,1]
    (float32) and model_fingerprint [2] int32.
    """

    def __init__(self, model: nn.Module, fingerprint: tuple[int, int]) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.register_buffer("fingerprint", torch.tensor(fingerprint, dtype=torch.int32))

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        # SAM2ImagePredictor passes boxes as points, so the prompt encoder always pads (+1 point).
        sparse = self.prompt_encoder._embed_points(
            point_coords, point_labels.to(torch.float32), pad=True
        )
        masked = self.prompt_encoder.mask_downscaling(mask_input)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(masked)
        dense = torch.where(has_mask_input.reshape(-1, 1, 1, 1) > 0.5, masked, no_mask)
        masks, iou_pred, _, object_score_logits = self.mask_decoder.predict_masks(
            image_embeddings=image_embed.to(torch.float32),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=True,
            high_res_features=[
                high_res_feats_0.to(torch.float32),
                high_res_feats_1.to(torch.float32),
            ],
        )
        return masks, iou_pred, object_score_logits, self.fingerprint
