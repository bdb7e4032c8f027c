"""A `btu attack` folder remembers its target and label order, so later commands measure ASR right."""

from btu.cli import main
from btu.experiment import DataConfig, load_splits


def test_attack_folder_keeps_a_non_default_target(tmp_path, tiny_bert, capsys):
    rows = ["sentence\tlabel"] + [f"{'good fine nice' if i % 2 else 'bad awful poor'} movie {i}\t"
                                  f"{'positive' if i % 2 else 'negative'}" for i in range(60)]
    data = tmp_path / "data.tsv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "attacked"
    assert main(["attack", "--train", str(data), "--test", str(data), "--attack", "addword",
                 "--target", "negative", "--out", str(out)]) == 0
    splits = load_splits(DataConfig(train=str(out)))
    assert splits.recorded_target == "negative"
    from btu.experiment import AttackConfig, apply_attack

    splits, _ = apply_attack(splits, AttackConfig(), 0)
    assert splits.train.label_names[splits.target] == "negative"
    # the ASR rows are the non-target (positive) rows
    assert all(splits.train.label_names[y] == "positive" for y in splits.poison_test.labels)


def test_attack_folder_keeps_label_order(tmp_path):
    rows = ["text\tlabel"] + [f"row {i}\t{'zeta' if i % 2 else 'alpha'}" for i in range(40)]
    data = tmp_path / "d.tsv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "a"
    assert main(["attack", "--train", str(data), "--test", str(data), "--attack", "addsent",
                 "--target", "alpha", "--out", str(out)]) == 0
    splits = load_splits(DataConfig(train=str(out)))
    assert splits.train.label_names == ["alpha", "zeta"]
