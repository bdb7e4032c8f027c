"""Figure 1 of the paper: embedding distance over training steps, backdoor tokens vs clean tokens."""

from __future__ import annotations

from pathlib import Path


def figure1(detection, trigger_ids, tokenizer, input_ids, path, title=""):
    """One panel per detection round: each trigger token's curve, and the mean and 5-95 % band of the
    clean tokens that occur in the training data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    seen = sorted({t for row in input_ids for t in row} - set(tokenizer.all_special_ids) - set(trigger_ids))
    rounds = detection.rounds
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.2 * len(rounds), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rounds):
        steps = r.history_steps
        clean = r.history[:, seen]
        q = torch.quantile(clean.float(), torch.tensor([0.05, 0.95]), dim=1)
        ax.fill_between(steps, q[0].numpy(), q[1].numpy(), color="tab:blue", alpha=0.2, label="clean 5-95 %")
        ax.plot(steps, clean.mean(1).numpy(), color="tab:blue", label="clean mean")
        ax.plot(steps, clean.max(1).values.numpy(), color="tab:blue", ls=":", lw=1, label="clean max")
        present = {tid for row in input_ids for tid in row}
        colors = iter(["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
        for t in trigger_ids:
            if t not in present:
                continue
            ax.plot(steps, r.history[:, t].numpy(), lw=2, color=next(colors, "black"),
                    label=f"trigger '{tokenizer.convert_ids_to_tokens(t)}'")
        ax.set_title(f"round {r.round}")
        ax.set_xlabel("training step")
        ax.set_ylabel("L2 distance from pretrained")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
