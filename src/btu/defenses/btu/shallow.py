"""M*, the shallow model of BTU's rounds 2 and 3: the embedding block of a pretrained
model followed directly by a classification head, with mean pooling.

With the transformer layers gone, the only way to learn the labels is through the token
vectors themselves, so a shortcut token's row moves fastest of all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ShallowOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class EmbeddingBlock(nn.Module):
    """Word (+ position, + token type, + LayerNorm) embeddings of any HF model, copied.

    BERT/RoBERTa/MPNet-style bases expose `embeddings(input_ids=...)`; GPT-2 has wte+wpe;
    Llama-style models only their input embeddings (rotary positions live in attention).
    """

    def __init__(self, model):
        super().__init__()
        base = model.base_model
        self.kind = "words"
        if isinstance(getattr(base, "embeddings", None), nn.Module) and hasattr(base.embeddings, "forward"):
            self.block = copy.deepcopy(base.embeddings)
            self.kind = "block"
        elif isinstance(getattr(base, "wpe", None), nn.Module):
            self.words = copy.deepcopy(base.wte)
            self.positions = copy.deepcopy(base.wpe)
            self.kind = "gpt2"
        if self.kind == "words":
            self.words = copy.deepcopy(model.get_input_embeddings())
        self.pad_id = getattr(model.config, "pad_token_id", None)

    def word_embeddings(self) -> nn.Embedding:
        if self.kind == "block":
            for name in ("word_embeddings", "tok_embeddings", "embed_tokens"):
                if hasattr(self.block, name):
                    return getattr(self.block, name)
            raise TypeError(f"cannot find word embeddings in {type(self.block).__name__}")
        return self.words

    def forward(self, input_ids):
        if self.kind == "block":
            return self.block(input_ids=input_ids)
        h = self.words(input_ids)
        if self.kind == "gpt2":
            pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            h = h + self.positions(pos)
        return h


class ShallowClassifier(nn.Module):
    """M*: embedding block -> mean pooling -> linear head. No dropout in the head."""

    def __init__(self, model, num_labels: int, masked_pooling: bool = True, pad_to: int | None = None,
                 dropout: bool = False):
        super().__init__()
        self.embed = EmbeddingBlock(model)
        if not dropout:
            for m in self.embed.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
        hidden = self.embed.word_embeddings().embedding_dim
        self.head = nn.Linear(hidden, num_labels)
        self.masked_pooling = masked_pooling
        self.pad_to = pad_to  # the authors pad every row to 128 and average over all positions
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def get_input_embeddings(self):
        return self.embed.word_embeddings()

    def forward(self, input_ids, attention_mask=None, labels=None):
        if self.pad_to and input_ids.shape[1] < self.pad_to:
            extra = self.pad_to - input_ids.shape[1]
            input_ids = nn.functional.pad(input_ids, (0, extra), value=self.pad_id)
            if attention_mask is not None:
                attention_mask = nn.functional.pad(attention_mask, (0, extra), value=0)
        h = self.embed(input_ids)
        if self.masked_pooling and attention_mask is not None:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            pooled = h.mean(1)
        logits = self.head(pooled)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return ShallowOutput(loss, logits)
