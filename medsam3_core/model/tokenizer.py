"""Offline CLIP BPE tokenizer for SAM3's text encoder.

SAM3 tokenises prompts with OpenAI CLIP's byte-level BPE (49 408 tokens, context 32). transformers maps ``sam3`` to
``CLIPTokenizer`` but ships no vocabulary, and we may never download one at run time, so the merges file
(``assets/bpe_simple_vocab_16e6.txt.gz``, MIT, from the ``open_clip_torch`` wheel) ships with the package and the
vocabulary is rebuilt from it exactly as CLIP does (its ids were checked against Meta's tokenizer and agree).
A checkpoint directory that carries its own ``tokenizer.json`` wins over the bundled one.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import CLIPTokenizer, PreTrainedTokenizerBase

from medsam3_core.errors import PromptError

__all__ = ["CONTEXT_LENGTH", "BPE_PATH", "bundled_tokenizer", "load_tokenizer", "tokenize"]

CONTEXT_LENGTH = 32
BPE_PATH = Path(__file__).resolve().parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """CLIP's reversible byte→unicode symbols, in vocabulary order.

    Printable bytes stand for themselves and come first; the remaining bytes are given code points from 256 up,
    in byte order, so that BPE never sees whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@lru_cache(maxsize=1)
def bundled_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer rebuilt from the bundled merges file (≈0.1 s, cached)."""
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)},
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def load_tokenizer(model_dir: Optional[Path] = None) -> PreTrainedTokenizerBase:
    """Tokenizer files of a checkpoint directory when present (never downloads), else the bundled one."""
    if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return bundled_tokenizer()


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each ``(P, 32)`` long, as SAM3's processor would produce them."""
    cleaned = [p.strip() for p in prompts]
    if not cleaned or any(not p for p in cleaned):
        raise PromptError("Every prompt must be a non-empty text such as 'kidney'.")
    enc = tokenizer(
        cleaned, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]
