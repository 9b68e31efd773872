"""A Grounding DINO model directory with seeded random weights, for offline tests and benchmarks.

No model hub is reachable here, so tests and ``bench text`` build the detector from transformers'
own config classes: ``torch.manual_seed(seed)``, ``GroundingDinoForObjectDetection(config)``,
``save_pretrained``, with a BERT tokenizer made from a small vocabulary written here. The
directory has the layout of a downloaded checkpoint and goes through the same loading path
(``detector_export.load_detector``). Its detections are meaningless.
"""

from __future__ import annotations

from pathlib import Path

from sam2_triton import text_spec

ARCHS = ("test", "swin-t")
# Raised whenever the weights written for an (arch, seed) change, so that caches of them (bench
# text) are rebuilt: 2 = logits scaled by LOGIT_SCALE, 32 queries for "test".
BUILD = 2
# Random weights give logits of std ~8 (unscaled dot products of normalised features): nearly
# every query's score is exactly 1.0 in float32, so thresholds and score comparisons would be
# vacuous. The decoder's last LayerNorm (the logits are linear in it) is scaled by this factor:
# scores then spread over (0, 1) like a trained model's.
LOGIT_SCALE = 0.25
VOCAB_SIZE = 1100
FIRST_WORD_ID = 1030  # after bert-base-uncased's "?" (1029): the ids the model hard-codes fit
WORDS = (
    "a an the cat cats dog dogs remote control person people car red blue green of on and "
    "with table couch ball chair tree sky road window door"
).split() + ["##s", "##ing", ","]


def write_vocab(path: Path) -> None:
    """A WordPiece ``vocab.txt`` of :data:`VOCAB_SIZE` tokens with [PAD], [UNK], [CLS], [SEP],
    [MASK], "." and "?" at bert-base-uncased's ids (the ones Grounding DINO hard-codes)."""
    vocab = [f"[unused{i}]" for i in range(VOCAB_SIZE)]
    vocab[100], vocab[103] = "[UNK]", "[MASK]"
    for token, i in text_spec.SPECIAL_TOKENS.items():
        vocab[i] = token
    for i, word in enumerate(WORDS):
        vocab[FIRST_WORD_ID + i] = word
    path.write_text("\n".join(vocab) + "\n")


def write_random_detector(out_dir: str | Path, arch: str = "test", seed: int = 0) -> Path:
    """Write a loadable Grounding DINO directory into ``out_dir`` and return it.

    ``arch``: ``test`` (1.8 M parameters, Swin 32-dim, processor resize 320/480, 32 queries:
    an export takes seconds) or ``swin-t`` (``GroundingDinoConfig()``'s defaults, the shapes of
    IDEA-Research/grounding-dino-tiny: Swin-T, BERT-base, 900 queries, resize 800/1333; only
    the vocabulary is small). The logits are scaled by :data:`LOGIT_SCALE`.
    """
    import torch
    import transformers
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    transformers.utils.logging.disable_progress_bar()
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_vocab(out / "vocab.txt")
    # transformers 5.x: BertTokenizerFast(vocab_file=...) ignores the file; from_pretrained reads it
    tokenizer = BertTokenizerFast.from_pretrained(str(out), do_lower_case=True)
    if arch == "test":
        edges = (320, 480)
        config = GroundingDinoConfig(
            backbone_config=SwinConfig(
                embed_dim=32,
                depths=[1, 1, 1, 1],
                num_heads=[1, 2, 4, 8],
                window_size=7,
                out_indices=[2, 3, 4],
            ),
            text_config=BertConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                max_position_embeddings=text_spec.MAX_TEXT_LEN,
            ),
            d_model=64,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            num_queries=32,  # few objects: SAM 2 decodes every kept box (~0.1 s each on CPU)
        )
    else:
        edges = (text_spec.SHORTEST_EDGE, text_spec.LONGEST_EDGE)
        config = GroundingDinoConfig(text_config=BertConfig(vocab_size=VOCAB_SIZE))
    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": edges[0], "longest_edge": edges[1]}
    )
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        out
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config)
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(LOGIT_SCALE)
        model.model.decoder.layer_norm.bias.mul_(LOGIT_SCALE)
    model.save_pretrained(out)
    return out
