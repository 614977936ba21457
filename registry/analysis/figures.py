"""The paper's figures, as PDF (for LaTeX) and PNG (for reading): matplotlib, Agg backend.

- training_curves: bridged accuracy and training loss over steps, one line per run;
- stability: peak vs final bridged accuracy per run (grouped by the `fixes` tag/param when
  runs carry one: fixes on vs off);
- sequence_length: accuracy against K for the runs that differ only in K (and seed);
- compression_quality: final accuracy against the compression ratio (prompt tokens / K;
  `latentbridge.metric_names.compression_ratio`);
- content_vs_k: content/fraction_recovered against K, with 95% bootstrap intervals.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from latentbridge.metric_names import BRIDGED_ACCURACY, FRACTION, LOSS, PROMPT_TOKENS_MEAN
from registry.analysis.collect import SuiteRun

FIGURES = ("training_curves", "stability", "sequence_length", "compression_quality", "content_vs_k")
VARY_FREELY = {"name", "suite", "output_dir", "seed", "translator.num_tokens"}

plt.rcParams.update(
    {
        "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "legend.fontsize": 7.5,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    fig.savefig(paths[0], bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", dpi=200)
    plt.close(fig)
    return paths


def _shared(values: Sequence[float | None]) -> float | None:
    """The baseline when every run has the same one (same pair and questions), else None."""
    present = [v for v in values if v is not None]
    if present and max(present) - min(present) < 1e-9 and len(present) == len(values):
        return present[0]
    return None


def _baselines(ax, runs: Sequence[SuiteRun], horizontal: bool = True) -> None:
    for value, label, style in (
        (_shared([r.facts.target_alone for r in runs]), "target alone", "--"),
        (_shared([r.facts.source_alone for r in runs]), "source alone", ":"),
    ):
        if value is not None:
            ax.axhline(value, color="0.35", linestyle=style, linewidth=1.1, label=f"{label} ({value:.3f})")


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4", wrap=True)


def _ema(values: list[float], alpha: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def training_curves(runs: Sequence[SuiteRun], out: Path, suite: str) -> list[Path]:
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = _colors(len(runs))
    for run, color in zip(runs, colors):
        curve = run.facts.history.get(BRIDGED_ACCURACY, [])
        if curve:
            steps, values = zip(*curve)
            acc_ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4, color=color, label=run.label)
        loss = run.facts.history.get(LOSS, [])
        if loss:
            steps, values = zip(*loss)
            if len(values) > 50:
                loss_ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.6)
                loss_ax.plot(steps, _ema(list(values), 2 / (len(values) / 20 + 1)), color=color, linewidth=1.4, label=run.label)
            else:
                loss_ax.plot(steps, values, color=color, linewidth=1.4, label=run.label)
    _baselines(acc_ax, runs)
    acc_ax.set(title="Bridged accuracy during training", xlabel="step", ylabel="accuracy")
    acc_ax.set_ylim(bottom=0)
    loss_ax.set(title="Training loss (answer NLL)", xlabel="step", ylabel="loss")
    if not any(r.facts.history.get(LOSS) for r in runs):
        _no_data(loss_ax, "no loss logged")
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(labels))), frameon=False)
    fig.suptitle(f"Suite {suite}: training curves", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "training_curves")


def fixes_group(run: SuiteRun) -> str | None:
    """'on'/'off' from the run's `fixes` tag or param, when it has one."""
    value = run.facts.tags.get("fixes") or run.facts.params.get("fixes")
    if value is None:
        return None
    return "on" if str(value).strip().lower() in ("1", "true", "on", "yes") else "off"


def stability(runs: Sequence[SuiteRun], out: Path, suite: str) -> list[Path]:
    groups = [fixes_group(r) for r in runs]
    grouped = any(g is not None for g in groups)
    order = sorted(range(len(runs)), key=lambda i: ({"on": 0, "off": 1, None: 2}[groups[i]], i)) if grouped else list(range(len(runs)))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(runs) + 2), 3.6))
    width = 0.38
    group_color = {"on": "tab:green", "off": "tab:red", None: "tab:blue"}
    for x, i in enumerate(order):
        run = runs[i]
        peak, final = run.facts.peak, run.facts.final
        color = group_color[groups[i]]
        if peak is not None:
            ax.bar(x - width / 2, peak, width, color=color, alpha=0.35, edgecolor=color)
        if final is not None:
            ax.bar(x + width / 2, final, width, color=color, edgecolor=color)
        if peak is not None and final is not None:
            ax.annotate(f"−{100 * (peak - final):.1f}" if peak > final else "±0", (x, max(peak, final)),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(range(len(order)))
    labels = [runs[i].label + (f"\n(fixes {groups[i]})" if groups[i] else "") for i in order]
    ax.set_xticklabels(labels, rotation=30 if len(runs) > 4 else 0, ha="right" if len(runs) > 4 else "center")
    _baselines(ax, runs)
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    handles = [Patch(facecolor="0.5", alpha=0.35, label="peak"), Patch(facecolor="0.5", label="final")] + handles
    if grouped:
        handles += [Patch(facecolor=group_color["on"], label="fixes on"), Patch(facecolor=group_color["off"], label="fixes off")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set(ylabel="bridged accuracy", title=f"Stability: peak vs final bridged accuracy{' (fixes on vs off)' if grouped else ''}")
    ax.set_ylim(0, max([0.05] + [v for r in runs for v in (r.facts.peak, r.facts.final, r.facts.target_alone) if v is not None]) * 1.15)
    fig.tight_layout()
    return _save(fig, out, "stability")


def k_family(runs: Sequence[SuiteRun]) -> list[SuiteRun]:
    """The runs that differ only in K (and seed): the group spanning the most K values."""
    families: dict[tuple, list[SuiteRun]] = defaultdict(list)
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.facts.params.items() if k not in VARY_FREELY))
        families[key].append(run)
    return max(families.values(), key=lambda f: (len({r.facts.K for r in f}), len(f)), default=[])


def sequence_length(runs: Sequence[SuiteRun], out: Path, suite: str) -> list[Path]:
    family = k_family(runs)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    by_k: dict[int, list[SuiteRun]] = defaultdict(list)
    for run in family:
        by_k[run.facts.K].append(run)
    ks = sorted(by_k)
    for attr, style, marker, label in (("final", "-", "o", "final"), ("peak", "--", "^", "peak")):
        means = []
        for k in ks:
            values = [getattr(r.facts, attr) for r in by_k[k] if getattr(r.facts, attr) is not None]
            ax.scatter([k] * len(values), values, s=12, alpha=0.5, marker=marker, color="tab:blue" if attr == "final" else "tab:orange")
            means.append(statistics.fmean(values) if values else float("nan"))
        ax.plot(ks, means, linestyle=style, marker=marker, color="tab:blue" if attr == "final" else "tab:orange", label=f"bridged {label}")
    _baselines(ax, family)
    ax.set_xticks(ks)
    ax.set(xlabel="soft tokens K", ylabel="accuracy", title="Sequence-length trade-off")
    ax.set_ylim(bottom=0)
    if len(ks) < 2:
        ax.text(0.5, 0.04, f"only K={ks[0] if ks else '?'} in this suite: add K variants (e.g. 32, 48, 64)",
                transform=ax.transAxes, ha="center", fontsize=7.5, color="0.4")
    left_out = len(runs) - len(family)
    if left_out:
        ax.text(1.0, -0.2, f"{left_out} run(s) differing in more than K left out", transform=ax.transAxes, ha="right", fontsize=7, color="0.4")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, out, "sequence_length")


def compression_quality(runs: Sequence[SuiteRun], out: Path, suite: str) -> list[Path]:
    known = [r for r in runs if r.facts.compression_ratio and r.facts.final is not None]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if not known:
        _no_data(ax, f"compression ratio unknown:\nthe prompt length could not be counted\n(log metric {PROMPT_TOKENS_MEAN})")
    else:
        family = {id(r) for r in k_family(known)}
        line = sorted((r for r in known if id(r) in family), key=lambda r: r.facts.compression_ratio)
        if len(line) > 1:
            ax.plot([r.facts.compression_ratio for r in line], [r.facts.final for r in line], color="tab:blue", linewidth=1, alpha=0.6)
        ax.scatter([r.facts.compression_ratio for r in known], [r.facts.final for r in known], color="tab:blue", zorder=3, label="bridged final")
        peaks = [(r.facts.compression_ratio, r.facts.peak) for r in known if r.facts.peak is not None]
        ax.scatter(*zip(*peaks), facecolors="none", edgecolors="tab:orange", zorder=3, label="bridged peak")
        for r in known:
            ax.annotate(f"{r.label} (K={r.facts.K})", (r.facts.compression_ratio, r.facts.final), textcoords="offset points",
                        xytext=(4, -9), fontsize=6.5, color="0.3")
        target = _shared([r.facts.target_alone for r in known])
        if target is not None:
            ax.scatter([1.0], [target], marker="*", s=90, color="0.2", zorder=3, label=f"target alone, full prompt ({target:.3f})")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set(xlabel="compression ratio (prompt tokens / K, log scale)", ylabel="accuracy", title="Compression vs quality")
    fig.tight_layout()
    return _save(fig, out, "compression_quality")


def content_vs_k(runs: Sequence[SuiteRun], out: Path, suite: str) -> list[Path]:
    """Fraction recovered against K, each bridge with its 95% bootstrap interval (controls left out)."""
    bridges = [r for r in runs if r.facts.kind != "soft_prompt" and r.facts.metrics.get(FRACTION) is not None]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if not bridges:
        _no_data(ax, "no content metrics in this suite's runs\n(eval.content_metrics=true measures them)")
    else:
        pairs = sorted({(r.facts.source_model, r.facts.target_model) for r in bridges})
        for color, pair in zip(_colors(len(pairs)), pairs):
            mine = sorted((r for r in bridges if (r.facts.source_model, r.facts.target_model) == pair), key=lambda r: r.facts.K)
            ks = [r.facts.K for r in mine]
            values = [r.facts.metrics[FRACTION] for r in mine]
            low = [v - (r.fraction_interval[0] if r.fraction_interval else v) for r, v in zip(mine, values)]
            high = [(r.fraction_interval[1] if r.fraction_interval else v) - v for r, v in zip(mine, values)]
            name = f"{pair[0].split('/')[-1]} → {pair[1].split('/')[-1]}"
            ax.errorbar(ks, values, yerr=[low, high], fmt="o", capsize=3, color=color, label=name)
        ax.axhline(0.0, color="0.4", linewidth=0.8)
        ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.text(ax.get_xlim()[0], 1.0, " full text", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(sorted({r.facts.K for r in bridges}))
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set(xlabel="soft tokens K", ylabel="fraction recovered", title="What crosses the bridge")
    fig.tight_layout()
    return _save(fig, out, "content_vs_k")


def write_figures(runs: Sequence[SuiteRun], out: Path, suite: str) -> list[Path]:
    paths = []
    for draw in (training_curves, stability, sequence_length, compression_quality, content_vs_k):
        paths += draw(runs, out, suite)
    return paths
