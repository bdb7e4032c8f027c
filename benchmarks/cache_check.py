"""Does the current code still train the victim that `benchmarks/cache` holds?

Retrains one cached victim (btu_table's recipe: 3 epochs, lr 2e-5, the attack at 10 %, target 1)
with `btu_table.cached_training`'s settings into a temporary folder and prints both models'
CACC / ASR and the largest weight difference. A difference means the cache predates a change
to training; the tables keep their cached victims so that every row of a table shares them.

    .venv/bin/python benchmarks/cache_check.py --attack addword --seed 0
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent / ".." / "shared" / "datasets"
ATTACK_DATA = {"addword": "sst2", "addsent": "sst2", "synbkd": "sst2-syn", "stylebkd": "sst2-style"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attack", default="addword", choices=list(ATTACK_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(HERE / "cache"))
    a = p.parse_args()
    cached_dir = Path(a.cache) / f"minilm-{a.attack}-seed{a.seed}-epochs3" / "victim"
    if not (SHARED / "sst2" / "train.tsv").exists() or not (cached_dir / "config.json").exists():
        print(f"needs SST-2 under {SHARED} and a cached victim in {cached_dir} (run btu_table.py first)")
        return
    from btu.attacks import make_attack
    from btu.data import load_source
    from btu.models import load_classifier
    from btu.training import TrainConfig, evaluate, train
    from btu.training.batching import encode
    from btu.training.seeding import seed_everything

    src = SHARED / ATTACK_DATA[a.attack]
    attack = make_attack(a.attack, rate=0.1, target=1)
    ptrain = attack.poison_train(load_source(str(src), "train"), a.seed)
    test = load_source(str(SHARED / "sst2"), "test")
    asr_source = load_source(str(src), "dev") if a.attack in ("synbkd", "stylebkd") else test
    ptest = attack.poison_test(asr_source, a.seed)
    seed_everything(a.seed)  # as btu_table: the new head's initialisation depends on it
    base, tok = load_classifier("minilm", label_names=ptrain.label_names)
    model = copy.deepcopy(base)
    train(model, tok, input_ids=encode(tok, ptrain.texts), labels=ptrain.labels,
          config=TrainConfig(epochs=3.0, lr=2e-5, seed=a.seed, progress=False))
    cached = load_classifier(str(cached_dir))[0]
    for name, m in (("trained now", model), ("cached", cached)):
        r = evaluate(m, tok, test, ptest, 1)
        print(f"{name:12s} CACC {r['cacc']:.2f}  ASR {r['asr']:.2f}  without trigger {r['asr_no_trigger']:.2f}")
    new, old = dict(model.named_parameters()), dict(cached.named_parameters())
    print(f"largest weight difference: {max((new[k].float() - old[k].float()).abs().max().item() for k in new):.4g}")


if __name__ == "__main__":
    main()
