"""The paper's figures, as PDF (for LaTeX) and PNG (for reading): matplotlib, Agg backend.

Each figure is drawn at most `PRINT_WIDTH` wide and the paper includes it at its natural size,
so no text is smaller on paper than `SMALLEST_FONT`. Accuracies are in %, each with its 95%
Wilson score interval over questions; the text baselines are lines with their interval as a band.

- training_curves: bridged validation accuracy at each evaluation, and the answer NLL (`loss/lm`;
  the total `loss` for a run that logged no `loss/lm`) over steps;
- stability: peak vs final validation accuracy per run and the drop in points (grouped by the
  `fixes` tag/param when runs carry one: fixes on vs off);
- sequence_length: accuracy against K for the runs whose recorded config diff changes K alone;
- compression_quality: held-out test accuracy (final validation, marked, for a run without a
  test) against the compression ratio (`latentbridge.metric_names.compression_ratio`);
- content_vs_k: content/fraction_recovered against K, with 95% bootstrap intervals.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from latentbridge.metric_names import BRIDGED_ACCURACY, FRACTION, LOSS, PROMPT_TOKENS_MEAN, SOURCE, TARGET
from registry.analysis.collect import LM_LOSS, SuiteRun
from registry.verdict import Estimate

PRINT_WIDTH = 6.3  # inches: at most the paper's text width (6.5 in), where figures print at 100%
SMALLEST_FONT = 8  # points, at print size
K_PARAM = "translator.num_tokens"
MARKERS = "osD^vP<>Xph"

plt.rcParams.update(
    {
        "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
        "font.size": 9,
        "axes.titlesize": 9,
        "axes.labelsize": 9,
        "xtick.labelsize": SMALLEST_FONT,
        "ytick.labelsize": SMALLEST_FONT,
        "legend.fontsize": SMALLEST_FONT,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _figure(width: float, height: float, **subplots) -> tuple[Figure, Axes]:
    return plt.subplots(figsize=(min(width, PRINT_WIDTH), height), layout="constrained", **subplots)


def _save(fig: Figure, out: Path, name: str) -> list[Path]:
    """PDF and PNG of exactly the figure's size (no tight cropping: the size is the print size)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    fig.savefig(paths[0])
    fig.savefig(paths[1], dpi=200)
    plt.close(fig)
    return paths


def _percent(estimate: Estimate) -> str:
    return f"{100 * estimate.value:.1f} [{100 * estimate.low:.1f}, {100 * estimate.high:.1f}]"


def _errorbar(ax: Axes, xs: Sequence[float], estimates: Sequence[Estimate], **style) -> None:
    """Accuracies in % with their intervals as bars."""
    values = [100 * e.value for e in estimates]
    below = [max(0.0, v - 100 * e.low) for v, e in zip(values, estimates)]
    above = [max(0.0, 100 * e.high - v) for v, e in zip(values, estimates)]
    ax.errorbar(xs, values, yerr=[below, above], capsize=2, elinewidth=0.9, **style)


def _from_zero(ax: Axes) -> None:
    """An accuracy axis from 0, with a little room below so that points at 0 stay visible."""
    top = max(ax.get_ylim()[1], 1.0)
    ax.set_ylim(-0.03 * top, top)


def _note(ax: Axes, text: str, width: int = 70) -> None:
    """A grey note under the axes (wrapped; the constrained layout makes room for it)."""
    ax.set_xlabel(ax.get_xlabel() + "\n" + textwrap.fill(text, width, break_on_hyphens=False), fontsize=SMALLEST_FONT, color="0.3")


def _no_data(ax: Axes, message: str) -> None:
    """An empty axes saying why: the message, no ticks."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")
    ax.set(xticks=[], yticks=[])


def _ema(values: list[float], alpha: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def baseline_split(runs: Sequence[SuiteRun]) -> str:
    """'test' when every run was tested (the baselines then come from the test evaluation), else 'val'."""
    return "test" if runs and all(r.test for r in runs) else "val"


def shared_baseline(runs: Sequence[SuiteRun], system: str, split: str) -> Estimate | None:
    """The text baseline `system` on `split` when every run has the same one (same pair and
    questions), else None."""
    scores = [r.test if split == "test" else r.validation for r in runs]
    if not scores or any(s is None or system not in s.accuracy for s in scores):
        return None
    values = [s.accuracy[system] for s in scores]
    return scores[0].estimate(system) if max(values) - min(values) < 1e-9 else None


def _baselines(ax: Axes, runs: Sequence[SuiteRun], split: str) -> None:
    """The shared text baselines as horizontal lines (in %) with their intervals as bands."""
    for system, style in ((TARGET, "--"), (SOURCE, ":")):
        found = shared_baseline(runs, system, split)
        if found is not None:
            ax.axhspan(100 * found.low, 100 * found.high, color="0.5", alpha=0.12, linewidth=0)
            ax.axhline(100 * found.value, color="0.35", linestyle=style, linewidth=1.1,
                       label=f"{system} alone ({split}) {_percent(found)}")


def loss_curve(run: SuiteRun) -> tuple[str, list[tuple[int, float]]]:
    """The metric the loss panel plots and its points: the answer NLL `loss/lm`, or the total
    `loss` when the run logged no `loss/lm`."""
    key = LM_LOSS if run.facts.history.get(LM_LOSS) else LOSS
    return key, run.facts.history.get(key, [])


def training_curves(runs: Sequence[SuiteRun]) -> Figure:
    fig, (acc_ax, loss_ax) = _figure(PRINT_WIDTH, 3.4, ncols=2)
    steps = [s for r in runs for s, _ in r.facts.history.get(BRIDGED_ACCURACY, [])]
    spread = 0.012 * (max(steps) - min(steps)) if steps else 0.0  # runs side by side at each step
    plotted: set[str] = set()  # the loss metrics drawn
    for i, (run, color) in enumerate(zip(runs, _colors(len(runs)))):
        shift = (i - (len(runs) - 1) / 2) * spread
        curve = run.facts.history.get(BRIDGED_ACCURACY, [])
        if curve:
            acc_ax.plot([s + shift for s, _ in curve], [100 * v for _, v in curve], marker="o", markersize=2.5,
                        linewidth=1.2, color=color, label=run.label)
        if run.evaluations:
            at = sorted(run.evaluations)
            _errorbar(acc_ax, [s + shift for s in at], [run.evaluations[s] for s in at], fmt="none", ecolor=color, alpha=0.8)
        key, loss = loss_curve(run)
        if loss:
            plotted.add(key)
            style = {"color": color, "linestyle": "--" if key == LOSS else "-"}
            xs, values = zip(*loss)
            if len(values) > 50:
                loss_ax.plot(xs, values, alpha=0.2, linewidth=0.6, **style)
                values = _ema(list(values), 2 / (len(values) / 20 + 1))
            loss_ax.plot(xs, values, linewidth=1.3, **style)
    _baselines(acc_ax, runs, "val")
    acc_ax.set(title="Bridged accuracy (validation)", xlabel="step", ylabel="accuracy (%)")
    _from_zero(acc_ax)
    if not plotted:
        _no_data(loss_ax, "no loss logged")
    lm = LM_LOSS in plotted
    loss_ax.set(title=f"Answer NLL ({LM_LOSS})" if lm else f"Total loss (no {LM_LOSS} logged)",
                xlabel="step", ylabel="NLL" if lm else "loss")
    if lm and LOSS in plotted:
        loss_ax.legend(handles=[Line2D([], [], color="0.3", linestyle="--", label=f"total loss (no {LM_LOSS})")], loc="upper right")
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, max(1, len(labels))), frameon=False)
    return fig


def fixes_group(run: SuiteRun) -> str | None:
    """'on'/'off' from the run's `fixes` tag or param, when it has one."""
    value = run.facts.tags.get("fixes") or run.facts.params.get("fixes")
    if value is None:
        return None
    return "on" if str(value).strip().lower() in ("1", "true", "on", "yes") else "off"


def drop_label(run: SuiteRun) -> str | None:
    """Peak minus final validation accuracy in percentage points: '−1.5 pt', '0 pt'."""
    peak, final = run.facts.peak, run.facts.final
    if peak is None or final is None:
        return None
    drop = round(100 * (peak - final), 1)
    return f"−{drop:.1f} pt" if drop > 0 else "0 pt"


def stability(runs: Sequence[SuiteRun]) -> Figure:
    groups = [fixes_group(r) for r in runs]
    grouped = any(g is not None for g in groups)
    order = sorted(range(len(runs)), key=lambda i: ({"on": 0, "off": 1, None: 2}[groups[i]], i))
    fig, ax = _figure(3 + 0.6 * len(runs), 3.4)
    width = 0.38
    group_color = {"on": "tab:green", "off": "tab:red", None: "tab:blue"}
    for x, i in enumerate(order):
        run, color = runs[i], group_color[groups[i]]
        for value, offset, light in ((run.facts.peak, -width / 2, True), (run.facts.final, width / 2, False)):
            if value is None:
                continue
            ax.bar(x + offset, 100 * value, width, color=color, alpha=0.35 if light else 1.0, edgecolor=color)
            if value == 0:  # a bar of height 0 is invisible: a marker on the axis instead
                ax.plot(x + offset, 0, marker="o", markersize=5, color=color, markerfacecolor="white" if light else color,
                        clip_on=False, zorder=4)
        label = drop_label(run)
        if label is not None:
            ax.annotate(label, (x, 100 * max(run.facts.peak, run.facts.final)), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=SMALLEST_FONT)
    ax.set_xticks(range(len(order)))
    tilted = len(runs) > 4
    ax.set_xticklabels([runs[i].label + (f"\n(fixes {groups[i]})" if groups[i] else "") for i in order],
                       rotation=30 if tilted else 0, ha="right" if tilted else "center")
    _baselines(ax, runs, "val")
    handles, _ = ax.get_legend_handles_labels()
    handles = [Patch(facecolor="0.5", alpha=0.35, label="peak"), Patch(facecolor="0.5", label="final")] + handles
    if grouped:
        handles += [Patch(facecolor=group_color["on"], label="fixes on"), Patch(facecolor=group_color["off"], label="fixes off")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    ax.set(ylabel="bridged accuracy (%)", title="Peak vs final validation accuracy; drop in points")
    values = [v for r in runs for v in (r.facts.peak, r.facts.final, r.facts.target_alone) if v is not None]
    ax.set_ylim(0, 100 * max([0.05, *values]) * 1.18)
    return fig


def k_sweep(runs: Sequence[SuiteRun]) -> tuple[list[SuiteRun], dict[str, str]]:
    """The runs whose config diff against the suite's base (as recorded at submit) changes K
    alone or nothing, and each other run's label with why it is left out."""
    members, left_out = [], {}
    for run in runs:
        others = sorted(set(run.facts.config_diff) - {K_PARAM})
        if not run.facts.diff_recorded:
            left_out[run.label] = "config diff not recorded"
        elif others:
            names = [k.split(".")[-1] for k in others]
            left_out[run.label] = "also " + ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
        elif run.quality() is None:
            left_out[run.label] = "no evaluation records"
        else:
            members.append(run)
    return members, left_out


def _quality_style(split: str, color) -> dict:
    """Filled markers for test, hollow for the final validation evaluation."""
    return {"color": color, "markerfacecolor": color if split == "test" else "white"}


def sequence_length(runs: Sequence[SuiteRun]) -> Figure:
    members, left_out = k_sweep(runs)
    fig, ax = _figure(5.2, 3.4)
    by_k: dict[int, list[Estimate]] = defaultdict(list)
    for run in members:
        split, found = run.quality()
        by_k[run.facts.K].append(found)
        _errorbar(ax, [run.facts.K], [found], fmt="o", markersize=5, **_quality_style(split, "tab:blue"))
    ks = sorted(by_k)
    if len(ks) > 1:
        ax.plot(ks, [100 * statistics.fmean(e.value for e in by_k[k]) for k in ks], color="tab:blue", linewidth=1, alpha=0.6)
    if members:
        _baselines(ax, members, baseline_split(members))
        ax.set_xticks(ks)
        _from_zero(ax)
        ax.legend(loc="upper right", frameon=False)
    else:
        _no_data(ax, "no run differs from the suite's base in K alone")
    splits = sorted({r.quality()[0] for r in members})
    ax.set(xlabel="soft tokens K", ylabel=f"bridged accuracy ({' / '.join(splits) or 'test'}, %)",
           title="Accuracy against the number of soft tokens")
    notes = []
    if len(ks) == 1:
        notes.append(f"Only K={ks[0]}: one point, no trade-off to read.")
    if "val" in splits:
        notes.append("Hollow: final validation (no test evaluation).")
    if left_out:
        by_reason: dict[str, list[str]] = defaultdict(list)
        for label, why in left_out.items():
            by_reason[why].append(label)
        notes.append(f"Left out ({len(left_out)}): " + "; ".join(f"{', '.join(labels)} ({why})" for why, labels in by_reason.items()) + ".")
    if notes:
        _note(ax, " ".join(notes))
    return fig


def _spread_log(xs: Sequence[float], step: float = 0.04) -> list[float]:
    """The values, those that coincide spread apart on a log axis (centred on their value)."""
    groups: dict[float, list[int]] = defaultdict(list)
    for i, x in enumerate(xs):
        groups[round(math.log10(x), 3)].append(i)
    out = list(xs)
    for members in groups.values():
        for j, i in enumerate(members):
            out[i] = xs[i] * 10 ** ((j - (len(members) - 1) / 2) * step)
    return out


def compression_quality(runs: Sequence[SuiteRun]) -> Figure:
    """Each run's reported accuracy (`SuiteRun.quality`) against its compression ratio, one
    legend entry a run (colour and marker), and each target model alone reading the full prompt at 1x."""
    known = [r for r in runs if r.facts.compression_ratio and r.quality() is not None]
    fig, ax = _figure(PRINT_WIDTH, 3.4)
    if not known:
        _no_data(ax, f"compression ratio unknown:\nthe prompt length could not be counted\n(log metric {PROMPT_TOKENS_MEAN})")
    else:
        xs = _spread_log([r.facts.compression_ratio for r in known])
        for j, (run, x, color) in enumerate(zip(known, xs, _colors(len(known)))):
            split, found = run.quality()
            name = f"{run.label} (K={run.facts.K})" + ("" if split == "test" else ", final val")
            _errorbar(ax, [x], [found], fmt=MARKERS[j % len(MARKERS)], markersize=5, label=name, **_quality_style(split, color))
        by_target: dict[str, list[SuiteRun]] = defaultdict(list)
        for run in known:
            by_target[run.facts.target_model].append(run)
        targets = {model: shared_baseline(group, TARGET, baseline_split(group)) for model, group in by_target.items()}
        targets = {model: found for model, found in targets.items() if found is not None}
        shades = [f"{0.2 + 0.45 * i / max(1, len(targets) - 1):.2f}" for i in range(len(targets))]  # greys
        for (model, found), x, shade in zip(targets.items(), _spread_log([1.0] * len(targets)), shades):
            split = baseline_split(by_target[model])
            _errorbar(ax, [x], [found], fmt="*", markersize=9, color=shade, label=f"{model.split('/')[-1]} alone, full prompt ({split})")
        ax.set_xscale("log")
        ax.set_xlim(0.8, 1.3 * max(xs))  # from 1x, no compression, so that the ratios read against it
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _from_zero(ax)
        fig.legend(loc="outside right upper", frameon=False)
    test = all(r.quality()[0] == "test" for r in known)
    modes = {r.facts.params.get("eval.prompt_mode", "soft_only") for r in known}
    ratio = "prompt tokens / K" if "soft_plus_text" not in modes else (
        "prompt tokens / (prompt tokens + K)" if modes == {"soft_plus_text"} else "prompt tokens / K; soft_plus_text: / (prompt tokens + K)")
    ax.set(xlabel=f"compression ratio ({ratio}, log scale)",
           ylabel="bridged accuracy (%, " + ("held-out test" if test else "test; hollow: final val") + ")",
           title="Compression vs quality")
    return fig


def content_vs_k(runs: Sequence[SuiteRun]) -> Figure:
    """Fraction recovered against K, each bridge with its 95% bootstrap interval (controls left out)."""
    bridges = [r for r in runs if r.facts.kind != "soft_prompt" and r.facts.metrics.get(FRACTION) is not None]
    fig, ax = _figure(5.6, 3.4)
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
        ax.text(ax.get_xlim()[0], 1.0, " full text", va="bottom", fontsize=SMALLEST_FONT, color="0.4")
        ax.set_xticks(sorted({r.facts.K for r in bridges}))
        fig.legend(loc="outside right upper", frameon=False)
    ax.set(xlabel="soft tokens K", ylabel="fraction recovered", title="What crosses the bridge")
    return fig


DRAW: dict[str, Callable[[Sequence[SuiteRun]], Figure]] = {
    "training_curves": training_curves,
    "stability": stability,
    "sequence_length": sequence_length,
    "compression_quality": compression_quality,
    "content_vs_k": content_vs_k,
}
FIGURES = tuple(DRAW)


def write_figures(runs: Sequence[SuiteRun], out: Path) -> list[Path]:
    """Every figure of `FIGURES`, as PDF and PNG in `out`."""
    return [path for name, draw in DRAW.items() for path in _save(draw(runs), out, name)]
