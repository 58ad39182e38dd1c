"""Learning curves from the TensorBoard events the NVFlare server collects from the sites."""

from __future__ import annotations

from pathlib import Path


def read_tb_scalars(tb_root) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``tb_root/<site>/events.*`` -> {site: {tag: [(step, value), ...]}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for site_dir in sorted(p for p in Path(tb_root).glob("*") if p.is_dir()):
        acc = EventAccumulator(str(site_dir), size_guidance={"scalars": 0})
        acc.Reload()
        out[site_dir.name] = {tag: [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
                              for tag in acc.Tags().get("scalars", [])}
    return out


def plot_learning_curves(scalars: dict, out_png, title: str = "learning curves") -> Path:
    """Validation Dice of the received global model per round (left) and training loss (right),
    one line per site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for site, tags in scalars.items():
        if "val/dice" in tags:
            steps, vals = zip(*tags["val/dice"])
            ax_d.plot([s + 1 for s in steps], vals, marker="o", ms=3, label=site)
        loss_tag = "train/loss" if "train/loss" in tags else None
        if loss_tag:
            steps, vals = zip(*tags[loss_tag])
            ax_l.plot([s + 1 for s in steps], vals, label=site, alpha=0.8)
    ax_d.set(xlabel="round (global model received)", ylabel="validation mean 3D Dice", title="global model on each site",
             ylim=(0, 1))
    ax_l.set(xlabel="round", ylabel="mean training loss", title="local training loss per round")
    for ax in (ax_d, ax_l):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png
