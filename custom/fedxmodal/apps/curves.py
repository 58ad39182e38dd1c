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


def best_round_of(scalars: dict) -> int | None:
    """The round (0-based, the sites' step) whose received global model has the highest mean
    validation Dice over the sites that reported it; None without ``val/dice``."""
    per_round: dict[int, list[float]] = {}
    for tags in scalars.values():
        for step, value in tags.get("val/dice", []):
            per_round.setdefault(int(step), []).append(float(value))
    if not per_round:
        return None
    return max(sorted(per_round), key=lambda r: sum(per_round[r]) / len(per_round[r]))


def plot_learning_curves(scalars: dict, out_png, title: str = "learning curves", best_round: int | None = None) -> Path:
    """Validation Dice of the received global model per round (left) and training loss (right),
    one line per site; the round of the best model marked (a dashed line and a star per site).

    Args:
        scalars: ``{site: {tag: [(step, value)]}}`` (:func:`read_tb_scalars`).
        out_png: the PNG.
        title: the figure title.
        best_round: the server's best round (0-based: its ``fedxmodal_state["best"]["round"]``);
            default: the round with the highest mean validation Dice over the sites.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = "server's best model"
    if best_round is None:
        best_round, source = best_round_of(scalars), "highest mean validation Dice"
    fig, (ax_d, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for site, tags in scalars.items():
        if "val/dice" in tags:
            steps, vals = zip(*tags["val/dice"])
            line, = ax_d.plot([s + 1 for s in steps], vals, marker="o", ms=3, label=site)
            at = [v for s, v in zip(steps, vals) if best_round is not None and int(s) == int(best_round)]
            if at:
                ax_d.plot([best_round + 1], at[:1], marker="*", ms=13, color=line.get_color(),
                          markeredgecolor="black", linestyle="none")
        loss_tag = "train/loss" if "train/loss" in tags else None
        if loss_tag:
            steps, vals = zip(*tags[loss_tag])
            ax_l.plot([s + 1 for s in steps], vals, label=site, alpha=0.8)
    if best_round is not None:
        for ax in (ax_d, ax_l):
            ax.axvline(best_round + 1, color="black", linestyle="--", linewidth=1,
                       label=f"best model: round {best_round + 1} ({source})" if ax is ax_d else None)
    ax_d.set(xlabel="round (global model received)", ylabel="validation mean 3D Dice", title="global model on each site",
             ylim=(0, 1))
    ax_l.set(xlabel="round", ylabel="mean training loss", title="local training loss per round")
    for ax in (ax_d, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png
