"""Bad input on the command line: exit code 2 and one line on stderr naming the problem, no traceback."""

from __future__ import annotations

import pytest

from btu.cli import main


def good_tsv(write, name="good.tsv"):
    rows = "".join(f"{w} film number {i}\t{i % 2}\n" for i, w in enumerate(["good", "bad"] * 10))
    return write(name, "sentence\tlabel\n" + rows)


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err, command, *fragments):
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"btu {command}: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"


BAD_INPUTS = {
    "missing.tsv": None,  # not written
    "data.xlsx": b"PK\x03\x04 not a table",
    "empty_text.tsv": "sentence\tlabel\na\t0\n \t1\n",
    "one_class.tsv": "sentence\tlabel\na\t1\nb\t1\n",
    "latin1.tsv": b"sentence\tlabel\na\t0\ncaf\xe9\t1\n",
    "broken.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "label": 1\n',
}
EXPECTED = {
    "missing.tsv": ["file not found"],
    "data.xlsx": ["unknown format"],
    "empty_text.tsv": ["line 3", "empty text"],
    "one_class.tsv": ["only one class"],
    "latin1.tsv": ["line 3", "not UTF-8"],
    "broken.jsonl": ["line 2", "not valid JSON"],
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_train_on_bad_data_exits_2_with_one_line(name, write, tmp_path, capsys):
    content = BAD_INPUTS[name]
    bad = tmp_path / name if content is None else write(name, content)
    out = tmp_path / "out"
    code, _, err = run(["train", "--train", str(bad), "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    assert_one_line_error(err, "train", name, *EXPECTED[name])
    assert not out.exists()  # nothing half-done is left behind


def test_bad_test_file_names_the_test_file(write, tmp_path, capsys):
    good = good_tsv(write)
    bad = write("test.tsv", "sentence\tlabel\na\t0\nb\tneutral\n")
    code, _, err = run(["attack", "--train", str(good), "--test", str(bad), "--attack", "addword",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "attack", "test.tsv", "line 3", "unknown label 'neutral'")


def test_missing_model_folder_exits_2(write, tmp_path, capsys):
    good = good_tsv(write)
    code, _, err = run(["train", "--train", str(good), "--model", "/nonexistent/folder",
                        "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2
    assert_one_line_error(err, "train", "/nonexistent/folder")


def test_folder_without_config_json_exits_2(write, tmp_path, capsys):
    good = good_tsv(write)
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    code, _, err = run(["train", "--train", str(good), "--model", str(folder), "--out", str(tmp_path / "o"),
                        "--no-progress"], capsys)
    assert code == 2
    assert_one_line_error(err, "train", "not_a_model", "config.json")


@pytest.mark.parametrize("rate", ["0", "1.5", "-0.1"])
def test_poison_rate_out_of_range_exits_2(rate, write, tmp_path, capsys):
    good = good_tsv(write)
    code, _, err = run(["attack", "--train", str(good), "--test", str(good), "--attack", "addword",
                        "--rate", rate, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "attack", "rate")
    assert not (tmp_path / "o").exists()


def test_train_with_bad_rate_fails_before_loading_a_model(write, tmp_path, capsys):
    good = good_tsv(write)
    code, _, err = run(["train", "--train", str(good), "--attack", "addword", "--rate", "1.5",
                        "--model", "/nonexistent/folder", "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2
    assert_one_line_error(err, "train", "rate")


def test_unknown_target_label_exits_2(write, tmp_path, capsys):
    good = good_tsv(write)
    code, _, err = run(["attack", "--train", str(good), "--test", str(good), "--attack", "addword",
                        "--target", "neutral", "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "attack", "neutral")


def test_too_high_rate_for_the_eligible_rows_exits_2(write, tmp_path, capsys):
    good = good_tsv(write)  # 10 of 20 rows are not the target
    code, _, err = run(["attack", "--train", str(good), "--test", str(good), "--attack", "addword",
                        "--rate", "0.8", "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "attack", "cannot poison 16 rows", "10 eligible")


def test_synbkd_without_paraphrase_column_exits_2(write, tmp_path, capsys):
    good = good_tsv(write)
    code, _, err = run(["attack", "--train", str(good), "--test", str(good), "--attack", "synbkd",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert_one_line_error(err, "attack", "good.tsv", "'syntactic'")


def test_unknown_attack_name_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["attack", "--attack", "nosuch", "--out", "x"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "usage: btu" in capsys.readouterr().out
