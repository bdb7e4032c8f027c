"""Grid files, the SQLite store, the victim cache, the executors and the reports, on a tiny random model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_btu_detection import planted

from btu.bench import Store, load_grid, run_bench
from btu.bench.figures import ablations, make_figures
from btu.bench.report import summarize, write_report
from btu.cli import main
from btu.data import write_file
from btu.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK_BTU = {"alpha": 0.01, "detect_lr": 5e-3, "shallow_lr": 5e-3, "repair_lr": 1e-3, "detect_batch_size": 16,
             "shallow_batch_size": 16, "decide": "all"}


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny-grid.yaml"


@pytest.fixture
def study(tmp_path, tiny_bert):
    """tests/fixtures/tiny-grid.yaml beside its planted data and tiny model; grid(**over) writes a variant."""
    write_file(planted(96, seed=1), tmp_path / "data" / "train.tsv")
    write_file(planted(40, rate=0.0, seed=2), tmp_path / "data" / "test.tsv")
    write_file(planted(24, rate=1.0, seed=3), tmp_path / "data" / "test-poisoned.tsv")
    (tmp_path / "tiny-bert").symlink_to(tiny_bert, target_is_directory=True)

    def grid(name="g", **over):
        g = yaml.safe_load(FIXTURE.read_text())
        g.update(name=name, **over)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(g))
        return path

    return grid


def bad_grid(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name, cells, victims", [("table1-sst2", 228, 12), ("table3-sst2", 54, 6),
                                                  ("table4-sst2", 12, 3), ("table6-sst2", 18, 3)])
def test_the_shipped_grids_are_valid(name, cells, victims):
    g = load_grid(Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / f"{name}.yaml")
    assert len(g.cells) == cells and len({c.victim_key for c in g.cells}) == victims


@pytest.mark.parametrize("text, says", [
    ("data: [sst2]\ndefense: [none]\nseeds: [0]\n", "unknown key 'seeds' in grid (did you mean 'seed'?)"),
    ("data: [sst2]\ndefense: [nope]\n", "defense[0]: name: unknown defense 'nope'"),
    ("data: [sst2]\nattack: [addwrd]\ndefense: [none]\n", "attack[0]: name: unknown attack 'addwrd'"),
    ("data: [sst2]\nattack: [{name: addword, sentence: hi}]\ndefense: [none]\n",
     "attack[0]: unknown key 'sentence' in attack 'addword'"),
    ("data: [sst2]\nattack: [{name: addword, insertions: two}]\ndefense: [none]\n",
     "attack[0]: insertions: expects int"),
    ("data: [sst2]\ndefense: [{name: btu, set: {alfa: 1}}]\n", "defense[0]: set: unknown option 'alfa'"),
    ("data: [sst2]\ndefense: [{name: btu, set: {alpha: high}}]\n", "alpha"),
    ("data: [sst2]\ndefense: [{name: btu, recipe: fast}]\n", "recipe: defense 'btu' has the recipes"),
    ("data: [sst2]\ndefense: [none]\nset: {epochs: three}\n", "set: epochs: expects a number"),
    ("data: [sst2]\ndefense: [none]\nset: {alpha: 1}\n", "unknown key 'alpha' in the run settings"),
    ("data: [./missing.tsv]\ndefense: [none]\n", "data[0]: train: ./missing.tsv: no such file or folder"),
    ("data: [sst2]\ndefense: [none]\nseed: [-1]\n", "seed[0]: expects a whole number"),
    ("data: [sst2]\ndefense: [none, none]\n", "two entries make the same cell"),
    ("defense: [none]\n", "data: required"),
    ("data: [sst2\n", "not valid YAML"),
])
def test_a_bad_grid_is_refused_naming_the_file_and_the_key(tmp_path, text, says, capsys):
    path = bad_grid(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    assert str(e.value).startswith(str(path)) and says in str(e.value)
    assert main(["bench", str(path)]) == 2  # one line, exit 2, before any training
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and not (tmp_path / "bad.sqlite").exists()


def test_the_grid_crosses_its_lists_and_hashes_the_resolved_configuration(study):
    g = load_grid(study(attack=["none", {"name": "addword", "rate": 0.05}], seed=[0, 1]))
    assert len(g.cells) == 1 * 1 * 2 * 2 * 2
    assert len({c.key for c in g.cells}) == len(g.cells)
    assert len({c.victim_key for c in g.cells}) == 4  # the defenses share a victim
    # the defense varies fastest: a victim's cells run one after another
    assert [c.defense for c in g.cells[:2]] == ["none", "btu"] and g.cells[0].victim_key == g.cells[1].victim_key
    btu = next(c for c in g.cells if c.defense == "btu")
    assert btu.options["alpha"] == 0.01 and btu.options["decide"] == "all" and "rounds" in btu.options  # full options
    # the same configuration written another way is the same cell; a changed option is another
    same = load_grid(study(name="g2", set={"epochs": 2.0, "batch_size": 16, "lr": 0.005, "max_length": 128},
                           attack=["none", {"name": "addword", "rate": 0.05}], seed=[0, 1]))
    assert [c.key for c in same.cells] == [c.key for c in g.cells]
    other = load_grid(study(name="g3", defense=[{"name": "btu", "set": {**QUICK_BTU, "alpha": 0.02}, "label": "btu"}]))
    assert other.cells[0].key not in {c.key for c in g.cells}


def test_clean_data_goes_to_the_defenses_that_need_it_and_changes_no_other_cell(study, tmp_path):
    data = {"train": "data", "test": "data/test.tsv", "poison_test": "data/test-poisoned.tsv", "label": "planted"}
    with pytest.raises(ConfigError, match="defense 'strip' needs clean data"):
        load_grid(study(name="s1", defense=["none", "strip"]))
    plain = load_grid(study(name="s2"))
    defenses = yaml.safe_load(FIXTURE.read_text())["defense"]  # none, btu
    g = load_grid(study(name="s3", data=[{**data, "clean_data": "data/test.tsv"}], defense=defenses + ["strip"]))
    # none and btu: the same cells (and victim) as without clean data; strip gets it
    assert [c.key for c in g.cells[:2]] == [c.key for c in plain.cells]
    assert {c.victim_key for c in g.cells} == {plain.cells[0].victim_key}
    strip = g.cells[2]
    assert strip.gets_clean_data and strip.config()["data"]["clean_data"] == "data/test.tsv"
    assert not g.cells[1].gets_clean_data
    run = run_bench(g.path, tmp_path / "s3.sqlite", progress=False, only=["defense=strip"])
    store = Store(run.store, create=False)
    (rec,) = store.records()
    store.close()
    assert rec["status"] == "done" and rec["report"]["strip"]["threshold_rows"] == 20  # half of 40 clean rows


def test_bench_stores_each_cell_shares_victims_and_skips_stored_cells_on_rerun(study, tmp_path, capsys):
    grid = study(seed=[0, 1])
    run = run_bench(grid, progress=False, echo=lambda s: None)
    store = Store(tmp_path / "g.sqlite", create=False)
    recs = store.records()
    assert len(recs) == 4 and {r["status"] for r in recs} == {"done"}
    assert run.victims_trained == 2  # one per seed, not one per cell
    btu = [r for r in recs if r["defense"] == "btu"]
    assert all(r["artifacts"]["victim"]["cached"] for r in btu)
    for r in recs:  # what makes a number traceable
        assert r["config"]["seed"] == r["seed"] and r["config"]["options"] == (r["config"]["options"] or {})
        assert r["provenance"]["torch"] and r["provenance"]["machine"]["cpus"] and "git" in r["provenance"]
        assert r["timings"]["data"] >= 0 and r["seconds"] > 0
        assert 0 <= r["metrics"]["cacc"] <= 100 and 0 <= r["metrics"]["asr"] <= 100
    assert btu[0]["metrics"]["no_defense"]["cacc"] == next(
        r for r in recs if r["defense"] == "none" and r["seed"] == btu[0]["seed"])["metrics"]["cacc"]
    started = {r["key"]: r["started"] for r in recs}
    store.close()
    # a rerun runs nothing and changes nothing
    again = run_bench(grid, progress=False, echo=lambda s: None)
    assert not again.ran and len(again.cached) == 4
    assert {r["key"]: r["started"] for r in Store(tmp_path / "g.sqlite").records()} == started
    # the CLI prints the table in the papers' layout
    assert main(["bench", str(grid), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 in" in out and "0 to run" in out and "planted" in out and "tiny-bert" in out and "btu" in out
    # --dry-run lists every cell with its state
    assert main(["bench", str(grid), "--dry-run", "--store", str(tmp_path / "new.sqlite"), "--cache",
                 str(tmp_path / "btu-artifacts")]) == 0
    out = capsys.readouterr().out
    assert out.count(": to run") == 4 and out.count("victim cached") == 4
    assert main(["bench", str(grid), "--dry-run", "--only", "seed=1", "--only", "defense=btu"]) == 0
    assert capsys.readouterr().out.count("· seed 1: stored") == 1
    assert main(["bench", str(grid), "--only", "seed=7"]) == 2


def test_a_cached_victim_gives_the_numbers_a_trained_one_gives(study, tmp_path):
    shared = run_bench(study(), progress=False, echo=lambda s: None)  # btu loads the victim the none cell trained
    alone = run_bench(study(name="alone", defense=[{"name": "btu", "set": QUICK_BTU, "label": "btu"}]),
                      cache_path=tmp_path / "own-cache", progress=False, echo=lambda s: None)  # btu trains its own
    a = next(r for r in shared.ran if r["defense"] == "btu")
    b = alone.ran[0]
    assert a["key"] == b["key"] and a["artifacts"]["victim"]["cached"] and not b["artifacts"]["victim"]["cached"]
    assert a["metrics"] == b["metrics"]


def test_a_cached_poisoned_set_gives_the_numbers_a_fresh_one_gives(study, tmp_path):
    over = dict(attack=[{"name": "addword", "rate": 0.2}], defense=["none", "bki"],
                data=[{"train": "data/test.tsv", "test": "data/test.tsv", "label": "clean"}])  # the attack plants it
    shared = run_bench(study(**over), progress=False, echo=lambda s: None)
    first, second = shared.ran
    assert not first["artifacts"]["poisoned"]["cached"] and second["artifacts"]["poisoned"]["cached"]
    key = first["artifacts"]["poisoned"]["key"]
    assert second["artifacts"]["poisoned"]["key"] == key
    assert (tmp_path / "btu-artifacts" / "poisoned" / f"{key}.json").is_file()
    alone = run_bench(study(name="alone", **{**over, "defense": ["bki"]}), cache_path=tmp_path / "own-cache",
                      progress=False, echo=lambda s: None)  # poisons its own copy
    assert not alone.ran[0]["artifacts"]["poisoned"]["cached"]
    assert alone.ran[0]["metrics"] == second["metrics"] and second["metrics"]["filter"]["removed"] >= 0
    # an unreadable entry is made again, not trusted
    (tmp_path / "own-cache" / "poisoned" / f"{key}.json").write_text("{not json")
    again = run_bench(study(name="again", **{**over, "defense": ["bki"]}), cache_path=tmp_path / "own-cache",
                      progress=False, echo=lambda s: None)
    assert not again.ran[0]["artifacts"]["poisoned"]["cached"] and again.ran[0]["metrics"] == second["metrics"]


def test_a_failed_cell_is_stored_as_failed_and_runs_again(study, tmp_path):
    grid = study(data=[{"train": "data", "test": "data/test.tsv", "poison_test": "data/test-poisoned.tsv"}],
                 attack=[{"name": "addword", "target": "nosuchlabel"}], defense=["none"])
    with pytest.raises(Exception) as e:
        run_bench(grid, progress=False, echo=lambda s: None)
    assert "1 of 1 cells failed" in str(e.value) and "nosuchlabel" in str(e.value)
    store = Store(tmp_path / "g.sqlite")
    assert not store.records() and "nosuchlabel" in store.records(status="failed")[0]["error"]
    assert not store.done()


def test_a_run_killed_mid_cell_loses_no_finished_cell(study, tmp_path):
    grid = study(seed=[0, 1, 2, 3], defense=["none"], set={"epochs": 30, "batch_size": 16, "lr": 5e-3})
    db = tmp_path / "g.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "btu", "bench", str(grid), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as c:
                        if c.execute("SELECT count(*) FROM cells").fetchone()[0] >= 1:
                            break
                except sqlite3.OperationalError:
                    pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed: make its cells longer"
        os.kill(proc.pid, signal.SIGKILL)  # mid-cell: the next cell is training
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    store = Store(db)
    assert store.check() == "ok"
    kept = {r["key"]: r["started"] for r in store.records()}
    assert 1 <= len(kept) < 4
    store.close()
    run = run_bench(grid, progress=False, echo=lambda s: None)
    assert len(run.cached) == len(kept) and len(run.ran) == 4 - len(kept)
    after = {r["key"]: r["started"] for r in Store(db).records()}
    assert len(after) == 4 and all(after[k] == v for k, v in kept.items())


def test_report_writes_the_tables_and_a_page(study, tmp_path, capsys):
    grid = study(seed=[0, 1])
    run_bench(grid, progress=False, echo=lambda s: None)
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "g.sqlite"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "g: planted" in text and "(n=2)" in text
    for f in ("report.md", "report.csv", "report.json", "index.html"):
        assert (out / f).is_file()
    data = json.loads((out / "report.json").read_text())
    s = {e["defense"]: e for e in data["summary"]}
    assert set(s) == {"none", "btu"} and s["btu"]["n"] == 2 and s["btu"]["seeds"] == [0, 1]
    recs = Store(tmp_path / "g.sqlite").records()
    want = sum(r["metrics"]["cacc"] for r in recs if r["defense"] == "btu") / 2
    assert s["btu"]["cacc"]["mean"] == pytest.approx(want)
    csv_rows = (out / "report.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("grid,data,model,defense,attack,n")
    page = (out / "index.html").read_text()
    assert page.count("<table") == 1 and "sortable" in page and "btu" in page and "http" not in page
    # the BTU paper's Figure 1 (detection distances of the btu cell) and Figure 4 (t-SNE, no defense beside btu)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any(n.endswith("-distances.png") for n in pngs) and any(n.endswith("-tsne.png") for n in pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    btu_report = next(r for r in recs if r["defense"] == "btu")["report"]
    curves = btu_report["rounds"][0]["curves"]
    assert len(curves["steps"]) == len(curves["clean_mean"]) and curves["tokens"]
    assert "| defense |" in (out / "report.md").read_text()
    assert main(["report", str(tmp_path / "nope.sqlite")]) == 2


def _record(alpha, attack, seed, cacc, asr):
    return {"grid": "ab", "data": "d", "model": "m", "defense": f"btu alpha={alpha}", "defense_name": "btu",
            "attack": attack, "seed": seed, "config": {"options": {"alpha": alpha, "rounds": [1, 2, 3]},
                                                       "preset": "unlearn"},
            "metrics": {"cacc": cacc, "asr": asr}, "seconds": 1.0}


def test_an_option_that_varies_alone_becomes_an_ablation_figure():
    recs = [_record(a, att, s, 80 + a, 50 - 10 * a + s) for a in (1, 2, 3) for att in ("addword", "addsent")
            for s in (0, 1)]
    (ab,) = ablations(recs)
    assert ab["option"] == "alpha" and set(ab["series"]) == {"addword", "addsent"}
    assert ab["series"]["addword"] == [(1.0, 81, 40.5), (2.0, 82, 30.5), (3.0, 83, 20.5)]
    figs = make_figures(recs)
    assert len(figs) == 1 and next(iter(figs.values())).startswith(b"\x89PNG")
    # two options varying at once are not an ablation
    recs[0]["config"]["options"]["rounds"] = [1]
    assert ablations(recs) == []
    assert len(summarize(recs)) == 6


def test_report_of_an_empty_store_says_so(tmp_path, capsys):
    Store(tmp_path / "empty.sqlite").close()
    assert main(["report", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "r")]) == 0
    assert "no finished cells" in capsys.readouterr().out
    assert "no finished cells" in (tmp_path / "r" / "index.html").read_text()
    write_report([], tmp_path / "r2")
    assert (tmp_path / "r2" / "report.csv").read_text().startswith("grid,")


def test_a_cell_run_again_with_a_changed_configuration_supersedes_the_older_one(tmp_path, capsys):
    store = Store(tmp_path / "s.sqlite")
    for key, started, cacc in (("old", "2026-01-01T00:00:00", 70.0), ("new", "2026-02-01T00:00:00", 90.0)):
        store.put({**_record(1, "addword", 0, cacc, 10.0), "key": key, "status": "done", "started": started})
    store.put({**_record(1, "addword", 1, 80.0, 10.0), "key": "seed1", "status": "done"})
    store.close()
    assert main(["report", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "1 older cells are not in the table" in out
    (entry,) = json.loads((tmp_path / "r" / "report.json").read_text())["summary"]
    assert entry["n"] == 2 and entry["cacc"]["mean"] == pytest.approx(85.0)  # the new cell and seed 1, not the old


def test_a_rewritten_report_drops_its_own_stale_figures_and_keeps_the_users_files(tmp_path):
    out = tmp_path / "r"
    write_report([], out, {"a.png": b"a", "b.png": b"b"})
    (out / "mine.png").write_bytes(b"the user's")
    write_report([], out, {"a.png": b"a2"})
    assert (out / "a.png").read_bytes() == b"a2" and not (out / "b.png").exists()
    assert (out / "mine.png").read_bytes() == b"the user's"


def test_ray_runs_the_same_cells_into_the_store(study, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'btu[ray]')")
    grid = study()
    local = run_bench(grid, tmp_path / "local.sqlite", progress=False, echo=lambda s: None)
    lines = []
    ray_run = run_bench(grid, tmp_path / "ray.sqlite", tmp_path / "ray-cache", executor="ray", num_cpus=2,
                        echo=lines.append)
    assert len(ray_run.ran) == 2 and ray_run.victims_trained == 1  # btu waited for the victim none trained
    a = {r["key"]: r["metrics"] for r in Store(tmp_path / "local.sqlite").records()}
    b = {r["key"]: r["metrics"] for r in Store(tmp_path / "ray.sqlite").records()}
    assert a == b and len(a) == len(local.ran) == 2
    assert any("victim cached" in line for line in lines)
    assert main(["bench", str(grid), "--address", "auto"]) == 2  # an address needs --executor ray
    assert "--executor ray" in capsys.readouterr().err


def chromium():
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def header_pixels(page: Path, tmp_path: Path) -> int:
    """Screenshot `page` in headless Chromium; count the pixels of the tables' header background (#f3f3f3)."""
    from PIL import Image

    shot = tmp_path / f"{page.parent.name}.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,700", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import numpy as np

    px = np.asarray(Image.open(shot).convert("RGB"))
    return int((px == (243, 243, 243)).all(-1).sum())


def test_the_html_page_shows_its_table_in_a_browser(tmp_path):
    if chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; `make test` installs it where it can)")
    recs = [_record(a, att, s, 80 + a, 50 - 10 * a + s) for a in (1, 2) for att in ("addword", "addsent")
            for s in (0, 1)]
    write_report(recs, tmp_path / "full")
    write_report([], tmp_path / "empty")
    shown = header_pixels(tmp_path / "full" / "index.html", tmp_path)
    assert shown > 3000, "the screenshot shows no table header"
    # the same check on a page without a table finds (almost) none: the count is the table's, not the page's
    assert header_pixels(tmp_path / "empty" / "index.html", tmp_path) < 300


def test_btu_variants_of_one_victim_share_one_detection_and_its_numbers(study, tmp_path, monkeypatch):
    from btu.bench import cell

    variant = {"name": "btu", "set": {**QUICK_BTU, "repair_lr": 2e-3}, "label": "btu lr 2e-3"}
    other = {"name": "btu", "set": {**QUICK_BTU, "alpha": 0.02}, "label": "btu alpha 0.02"}
    monkeypatch.setattr(cell, "MEMO", cell.SharedArtifacts())
    run = run_bench(study(defense=["none", {"name": "btu", "set": QUICK_BTU, "label": "btu"}, variant, other]),
                    progress=False, echo=lambda s: None)
    reused = {r["defense"]: r["artifacts"]["reused"] for r in run.ran}
    assert reused == {"none": [], "btu": [], "btu lr 2e-3": ["btu.detection"], "btu alpha 0.02": []}
    monkeypatch.setattr(cell, "MEMO", cell.SharedArtifacts())  # a fresh process: nothing to reuse
    alone = run_bench(study(name="alone", defense=[variant]), cache_path=tmp_path / "own", progress=False,
                      echo=lambda s: None)
    assert alone.ran[0]["artifacts"]["reused"] == []
    mine = next(r for r in run.ran if r["defense"] == "btu lr 2e-3")
    assert alone.ran[0]["key"] == mine["key"] and alone.ran[0]["metrics"] == mine["metrics"]
    assert alone.ran[0]["report"]["flagged"] == mine["report"]["flagged"]
