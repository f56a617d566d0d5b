"""A tiny random BERT with its own small vocabulary, saved like any checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = (
    "the a an is was it this that film movie good bad great awful fine not very and but "
    "of to in on for with as at by from john mary paris london acme corp visited works "
    "what who where when how why yes no love hate boring fun slow fast happy sad today"
).split()


def build_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """Write a 2-layer, hidden-32 BERT and a word-level tokenizer into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ",", "!", "?", "'",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], *"abcdefghijklmnopqrstuvwxyz"]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    if int(transformers.__version__.split(".")[0]) >= 5:  # v5 takes the vocabulary itself
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)  # with a pooler, as BERT checkpoints have
    return directory
