"""Evaluation reports: JSON with every volume, and markdown tables people read."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def dice_table(rows: list[tuple[str, dict]], structures) -> str:
    """rows: (row name, summary with 'dice' per structure and 'mean_dice') -> markdown table."""
    head = "| | " + " | ".join(structures) + " | mean |\n|---|" + "---|" * (len(structures) + 1) + "\n"
    body = "".join(f"| {name} | " + " | ".join(_fmt(s["dice"].get(k)) for k in structures)
                   + f" | {_fmt(s['mean_dice'])} |\n" for name, s in rows)
    return head + body


def write_evaluation(evals: list[dict], prefix, title: str = "evaluation") -> tuple[Path, Path]:
    """evals: outputs of ``SegmentationEngine.evaluate``, one per site. Writes prefix.json and
    prefix.md (per-site summary table, then per-volume rows)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    structures = list(evals[0]["summary"]["dice"]) if evals else []
    js = prefix.with_suffix(".json")
    js.write_text(json.dumps({"title": title, "sites": evals}, indent=2))
    md = [f"# {title}\n", "3D Dice per structure on each site's test volumes (mean over volumes).\n",
          dice_table([(f"{e['site']} ({e['modality']}, {e['summary']['n_volumes']} vol)", e["summary"])
                      for e in evals], structures), "\n## Per volume\n"]
    md.append(dice_table([(f"{e['site']}/{v['case']}", v) for e in evals for v in e["per_volume"]], structures))
    out_md = prefix.with_suffix(".md")
    out_md.write_text("\n".join(md))
    return js, out_md


def cross_modality_matrix(results: dict[str, list[dict]]) -> str:
    """results: model name -> evaluations per site. Markdown matrix of mean Dice (rows: models,
    columns: sites)."""
    sites = sorted({e["site"] for evals in results.values() for e in evals})
    head = "| model \\ test site | " + " | ".join(sites) + " |\n|---|" + "---|" * len(sites) + "\n"
    rows = []
    for model, evals in results.items():
        by_site = {e["site"]: e["summary"]["mean_dice"] for e in evals}
        rows.append(f"| {model} | " + " | ".join(_fmt(by_site.get(s)) for s in sites) + " |\n")
    return head + "".join(rows)
