"""Triton python-backend models of sam2-triton; ``model_repository/<model>/1/model.py`` are shims.

``onnx_model``: the CPU flavour's onnxruntime runner for ``sam2_encoder``/``sam2_decoder``;
``session``: ``sam2_session`` (features held on the server); ``segment``: ``sam2_segment``
(one-shot segmentation over plain v2 REST). SAM 2's pre- and post-processing come from the SDK
(``sam2_triton.transforms``, ``sam2_triton.prompts``), never from a copy.
"""
