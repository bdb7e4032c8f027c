"""Options dataclasses: typed --set values, config files (YAML, TOML, JSON), preset < file < --set, the help
listing, and BTU's options split from its run settings."""

import json
from dataclasses import dataclass, fields

import pytest

from btu.defenses.btu.config import RECIPES, SETTINGS, BTUConfig, BTUOptions
from btu.defenses.options import (
    MISSING,
    Options,
    build_options,
    describe,
    format_value,
    from_dict,
    load_config_file,
    option,
    parse_set,
    parse_value,
    specs,
    to_dict,
)
from btu.errors import ConfigError


@dataclass
class Toy(Options):
    alpha: float = option(0.05, "a percent", low=0, high=100, low_inclusive=False)
    folds: int = option(2, "folds", low=2)
    flag: bool = option(True, "a switch")
    mode: str = option("a", "a mode", choices=("a", "b"))
    pad_to: int | None = option(None, "a length", low=1)
    lr: float | None = option(1e-3, "an lr")
    rounds: list[int] = option(help="rounds", factory=lambda: [1, 2], choices=(1, 2, 3))
    words: list[str] = option(help="words", factory=list)
    anything: list = option(help="a plain list", factory=list)
    name: str | None = option(None, "a name")


def test_parse_value_converts_each_type():
    assert parse_value(Toy, "alpha", "0.5") == 0.5 and isinstance(parse_value(Toy, "alpha", "1"), float)
    assert parse_value(Toy, "folds", "3") == 3
    for text, want in (("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("no", False)):
        assert parse_value(Toy, "flag", text) is want
    assert parse_value(Toy, "mode", "b") == "b"
    assert parse_value(Toy, "pad_to", "none") is None and parse_value(Toy, "pad_to", "128") == 128
    assert parse_value(Toy, "lr", "null") is None and parse_value(Toy, "lr", "1e-4") == 1e-4
    assert parse_value(Toy, "rounds", "1,3") == [1, 3] and parse_value(Toy, "rounds", "2 3") == [2, 3]
    assert parse_value(Toy, "rounds", "[1, 2]") == [1, 2]
    assert parse_value(Toy, "words", "cf,mn bb") == ["cf", "mn", "bb"]
    assert parse_value(Toy, "anything", "1,x,0.5") == [1, "x", 0.5]
    assert parse_value(Toy, "name", "None") is None and parse_value(Toy, "name", "bob") == "bob"
    with pytest.raises(ConfigError, match=r"option alpha: expects a float, not 'abc'"):
        parse_value(Toy, "alpha", "abc")
    with pytest.raises(ConfigError, match="option folds: expects an int"):
        parse_value(Toy, "folds", "2.5")
    with pytest.raises(ConfigError, match="option flag: expects a bool"):
        parse_value(Toy, "flag", "maybe")
    with pytest.raises(ConfigError, match="option pad_to: expects an int or none"):
        parse_value(Toy, "pad_to", "long")
    with pytest.raises(ConfigError, match="option rounds: expects a list of int"):
        parse_value(Toy, "rounds", "1,x")
    with pytest.raises(ConfigError, match="option folds: expects an int"):
        parse_value(Toy, "folds", "none")  # not an `int | None`


def test_unknown_option_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown option 'alpah' \(did you mean alpha\?\)"):
        parse_value(Toy, "alpah", "1")
    with pytest.raises(ConfigError, match="repair_filter_judge"):
        parse_value(BTUOptions, "repair_filter_jugde", "both")
    with pytest.raises(ConfigError, match="the options are alpha, folds"):
        parse_value(Toy, "zzz", "1")


def test_out_of_range_and_not_allowed_values_name_the_option():
    with pytest.raises(ConfigError, match=r"option alpha: must be in \(0, 100\], not 0$"):
        Toy(alpha=0)
    with pytest.raises(ConfigError, match=r"option alpha: must be in \(0, 100\]"):
        parse_value(Toy, "alpha", "101")
    with pytest.raises(ConfigError, match=r"option folds: must be >= 2, not 1"):
        parse_value(Toy, "folds", "1")
    with pytest.raises(ConfigError, match=r"option mode: must be one of a, b, not 'c'"):
        parse_value(Toy, "mode", "c")
    with pytest.raises(ConfigError, match=r"option rounds: items must be one of 1, 2, 3, not 4"):
        Toy(rounds=[1, 4])
    with pytest.raises(ConfigError, match="option lr: expects a float or none, not 'abc'"):
        Toy(lr="abc")
    with pytest.raises(ConfigError, match="option folds: expects an int, not True"):
        Toy(folds=True)
    with pytest.raises(ConfigError, match=r"option unlearn: must be one of btu, row, pr1, pr2, pn, none, not 'x'"):
        BTUOptions(unlearn="x")
    with pytest.raises(ConfigError, match="option repair_distill_weight: must be in \\[0, 1\\]"):
        BTUOptions(repair_distill_weight=1.5)
    with pytest.raises(ConfigError, match="option repair_distill_temperature: must be > 0"):
        BTUOptions(repair_distill_temperature=0)
    with pytest.raises(ConfigError, match="repair_filter_folds and repair_filter_passes: .* not 2 and 0"):
        BTUOptions(repair_filter_passes=0)
    # an int is a float, and a tuple a list
    t = Toy(alpha=1, rounds=(2, 1))
    assert isinstance(t.alpha, float) and t.rounds == [2, 1]


@pytest.mark.parametrize("kw, name", [
    (dict(repair_filter_judge="victim"), "repair_filter_judge"),
    (dict(repair_filter="crossfit", repair_filter_folds=1), "repair_filter_folds"),
    (dict(repair_filter="crossfit", repair_filter_passes=0), "repair_filter_folds"),
    (dict(repair_filter_labels="neg"), "repair_filter_labels"),
    (dict(repair_carrier_purity=1.5), "repair_carrier_purity"),
    (dict(repair_carrier_purity=0.0), "repair_carrier_purity"),
    (dict(repair_carriers="keep"), "repair_carriers"),
    (dict(repair_from="victim"), "repair_from"),
    (dict(fresh_lr=0.0), "fresh_lr"),
    (dict(repair_balance="prior"), "repair_balance"),
    (dict(repair_teacher="victim", repair_distill_weight=2.0), "repair_distill_weight"),
    (dict(repair_teacher="teacher"), "repair_teacher"),
    (dict(threshold="median"), "threshold"),
    (dict(alpha=0), "alpha"),
    (dict(rounds=[4]), "rounds"),
    (dict(rounds=[3]), "rounds"),
])
def test_btu_config_errors_name_the_option(kw, name):
    with pytest.raises(ConfigError, match=name):
        BTUConfig(**kw)
    with pytest.raises(ConfigError, match=name):
        BTUOptions(**kw)


def test_btu_cross_field_checks_name_the_option():
    with pytest.raises(ConfigError, match="option rounds: round 3 .* needs round 2"):
        BTUOptions(rounds=[1, 3])
    with pytest.raises(ConfigError, match="option rounds: must be a non-empty subset"):
        BTUOptions(rounds=[])
    with pytest.raises(ConfigError, match="option change_from: round1 needs detection round 1"):
        BTUOptions(change_from="round1", rounds=[2])
    assert BTUOptions(rounds=[2, 1, 2]).rounds == [1, 2]


def test_parse_set():
    assert parse_set(["a=1", "b=x=y", "repair-filter=agree", "a=2"]) == {"a": "2", "b": "x=y", "repair_filter": "agree"}
    assert parse_set([]) == {} and parse_set(["rounds="]) == {"rounds": ""}
    with pytest.raises(ConfigError, match="--set 'alpha': expects NAME=VALUE"):
        parse_set(["alpha"])
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_set(["=1"])


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_config_files_yaml_toml_json(tmp_path):
    want = {"alpha": 0.1, "rounds": [1, 2], "repair_filter": "agree", "fresh_lr": 1e-4, "shallow_masked_pooling": False}
    files = {
        "c.yaml": "alpha: 0.1\nrounds: [1, 2]\nrepair_filter: agree\nfresh_lr: 1e-4\nshallow_masked_pooling: false\n",
        "c.toml": 'alpha = 0.1\nrounds = [1, 2]\nrepair_filter = "agree"\nfresh_lr = 1e-4\n'
                  'shallow_masked_pooling = false\n',
        "c.json": json.dumps(want),
    }
    for name, text in files.items():
        values, meta = load_config_file(_write(tmp_path, name, text))
        assert values == want and meta == {"defense": None, "preset": None}, name
        opts = build_options(BTUOptions, file_values=values, source=name)
        assert (opts.alpha, opts.rounds, opts.repair_filter, opts.fresh_lr, opts.shallow_masked_pooling) == \
            (0.1, [1, 2], "agree", 1e-4, False)
    # the options under `options`, beside the defense and a preset
    nested = _write(tmp_path, "n.yml",
                    "defense: btu\npreset: retrain\noptions:\n  alpha: 0.2\n  shallow_pad_to: null\n")
    assert load_config_file(nested) == ({"alpha": 0.2, "shallow_pad_to": None},
                                        {"defense": "btu", "preset": "retrain"})
    # TOML has no null: `none` stands for it where the option may be None
    values, _ = load_config_file(_write(tmp_path, "none.toml", 'repair_embedding_lr = "none"\n'))
    assert build_options(BTUOptions, file_values=values).repair_embedding_lr is None


def test_config_file_errors_name_the_file_and_the_key(tmp_path):
    for name, text in (("u.yaml", "alpha: 0.1\nalpah: 2\n"), ("u.toml", "alpah = 2\n"), ("u.json", '{"alpah": 2}')):
        p = _write(tmp_path, name, text)
        values, _ = load_config_file(p)
        with pytest.raises(ConfigError, match=rf"{name}: unknown option 'alpah' \(did you mean alpha\?\)"):
            build_options(BTUOptions, file_values=values, source=str(p))
    # a file's values are typed: a string is no float (no parsing from text), an int is
    for name, text in (("t.yaml", "alpha: abc\n"), ("t.toml", 'alpha = "0.1"\n'), ("t.json", '{"alpha": "0.1"}')):
        p = _write(tmp_path, name, text)
        with pytest.raises(ConfigError, match=rf"{name}: option alpha: expects a float, not '"):
            build_options(BTUOptions, file_values=load_config_file(p)[0], source=str(p))
    p = _write(tmp_path, "w.yaml", "repair_filter_folds: 1\n")
    with pytest.raises(ConfigError, match=r"w.yaml: option repair_filter_folds: must be >= 2, not 1"):
        build_options(BTUOptions, file_values=load_config_file(p)[0], source=str(p))
    with pytest.raises(ConfigError, match="w.yaml: option rounds: expects a list of int"):
        build_options(BTUOptions, file_values={"rounds": "1,2"}, source=str(p))
    assert build_options(BTUOptions, file_values={"detect_epochs": 2}).detect_epochs == 2.0
    # unreadable files
    with pytest.raises(ConfigError, match="missing.yaml: no such config file"):
        load_config_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML: .*\(line 2, column 1\)$"):
        load_config_file(_write(tmp_path, "bad.yaml", "alpha: [1,\n"))
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config_file(_write(tmp_path, "bad.toml", "alpha = \n"))
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config_file(_write(tmp_path, "bad.json", "{alpha: 1}"))
    with pytest.raises(ConfigError, match="list.yaml: expects a mapping"):
        load_config_file(_write(tmp_path, "list.yaml", "- alpha\n"))
    with pytest.raises(ConfigError, match="opts.json: options expects a mapping"):
        load_config_file(_write(tmp_path, "opts.json", '{"options": [1]}'))
    with pytest.raises(ConfigError, match="extra.yaml: unknown key 'alpha' beside options"):
        load_config_file(_write(tmp_path, "extra.yaml", "defense: btu\nalpha: 0.1\n"))
    with pytest.raises(ConfigError, match="c.ini: unknown config format"):
        load_config_file(_write(tmp_path, "c.ini", "alpha=1\n"))


def test_set_overrides_file_overrides_preset(tmp_path):
    p = _write(tmp_path, "c.yaml", "alpha: 0.2\nfresh_lr: 2.0e-5\nrepair_filter: crossfit\n")
    opts = build_options(BTUOptions, preset=RECIPES["retrain"], file_values=load_config_file(p)[0],
                         set_values=parse_set(["alpha=0.3", "rounds=1,2", "repair_controls=false"]), source=str(p))
    assert opts.alpha == 0.3 and opts.rounds == [1, 2] and opts.repair_controls is False  # --set
    assert opts.fresh_lr == 2e-5 and opts.repair_filter == "crossfit"  # the file over the preset
    assert opts.repair_from == "pretrained" and opts.repair_carriers == "other-labels-stripped"  # the preset
    assert opts.detect_lr == 2e-5  # the default
    assert build_options(BTUOptions, preset=RECIPES["retrain"]) == BTUOptions.recipe("retrain")
    with pytest.raises(ConfigError, match=r"--set: option alpha: must be in \(0, 100\]"):
        build_options(BTUOptions, set_values={"alpha": "0"})
    with pytest.raises(ConfigError, match="--set: unknown option 'alfa'"):
        build_options(BTUOptions, set_values={"alfa": "0.1"})
    # cross-field checks run on the merged values
    with pytest.raises(ConfigError, match="option change_from"):
        build_options(BTUOptions, file_values={"change_from": "round1"}, set_values={"rounds": "2"})


def test_to_dict_from_dict_round_trip(tmp_path):
    opts = BTUOptions.recipe("retrain", alpha=0.1, rounds=[2, 1], shallow_pad_to=128)
    d = to_dict(opts)
    assert d["rounds"] == [1, 2] and from_dict(BTUOptions, d) == opts
    # through JSON, YAML and a config file
    p = _write(tmp_path, "saved.json", json.dumps({"options": d}))
    assert from_dict(BTUOptions, load_config_file(p)[0]) == opts
    import yaml

    p = _write(tmp_path, "saved.yaml", yaml.safe_dump(d))
    assert build_options(BTUOptions, file_values=load_config_file(p)[0]) == opts
    assert BTUOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ConfigError, match=r"BTUOptions: unknown option 'victim_epochs'"):
        from_dict(BTUOptions, {**d, "victim_epochs": 3.0})


def test_describe_lists_every_btu_option_with_default_and_help():
    text = describe(BTUOptions)
    lines = text.splitlines()
    names = [f.name for f in fields(BTUOptions)]
    assert len(lines) == len(names) + 1
    by_name = {s.name: s for s in specs(BTUOptions)}
    assert list(by_name) == names
    for line, name in zip(lines[1:], names):
        s = by_name[name]
        assert s.help and s.help.strip() == s.help and "\n" not in s.help, name
        assert line.split()[0] == name and format_value(s.default) in line and s.help in line, name
    assert by_name["alpha"].range_text == "(0, 100]" and by_name["alpha"].default == 0.05
    assert by_name["unlearn"].choices == ("btu", "row", "pr1", "pr2", "pn", "none")
    assert by_name["rounds"].default == [1, 2, 3] and by_name["rounds"].type_name == "list[int]"
    assert by_name["fresh_lr"].type_name == "float | None" and by_name["fresh_lr"].range_text == "> 0"
    assert "one of: btu, row" in text and "(range: (0, 100])" in text
    # every BTUConfig field (the run settings too) has help
    assert all(s.help for s in specs(BTUConfig))
    assert specs(Toy)[0].default == 0.05 and format_value(MISSING) == "(required)"


def test_btu_config_is_options_plus_run_settings():
    opt_names = {f.name for f in fields(BTUOptions)}
    cfg_names = [f.name for f in fields(BTUConfig)]
    assert set(cfg_names) == opt_names | set(SETTINGS) and not opt_names & set(SETTINGS)
    cfg = BTUConfig.recipe("retrain", alpha=0.1, victim_epochs=2, seed=3)
    assert isinstance(cfg, BTUConfig) and cfg.victim_epochs == 2.0 and isinstance(cfg.victim_epochs, float)
    assert cfg.options() == BTUOptions.recipe("retrain", alpha=0.1)
    assert cfg.settings() == {"victim_epochs": 2.0, "batch_size": 32, "lr": 2e-5, "max_length": 128,
                              "precision": "auto", "seed": 3, "progress": True}
    assert BTUConfig(**to_dict(cfg.options()), **cfg.settings()) == cfg
    with pytest.raises(ConfigError, match="option precision: must be one of auto, bf16, fp32"):
        BTUConfig(precision="fp16")
    with pytest.raises(ConfigError, match="recipe must be one of"):
        BTUOptions.recipe("paper2")


def test_required_options():
    @dataclass
    class Req(Options):
        lm: str = option(help="a language model")
        k: int = option(3, "k")

    assert build_options(Req, set_values={"lm": "gpt2"}).lm == "gpt2"
    with pytest.raises(ConfigError, match="option lm: required"):
        build_options(Req)
    assert specs(Req)[0].default is MISSING and "(required)" in describe(Req)
