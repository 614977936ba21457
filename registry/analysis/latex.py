"""LaTeX tables (main_results, ablations, compression) and a `paper.tex` skeleton.

Each table file holds a bare `tabular` (booktabs; `tabularx` for ablations, whose change
descriptions wrap), so the paper sets the float and caption. Figures are included at their
natural size (`figures.PRINT_WIDTH`), so their text prints at the size it was drawn.
Everything needs only Debian's texlive-latex-base and texlive-latex-recommended.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from latentbridge.metric_names import BRIDGED, LOSS, SOURCE, TARGET, TEST_PREFIX
from registry.analysis import tables
from registry.analysis.collect import LM_LOSS, SuiteData
from registry.analysis.figures import FIGURES, k_sweep, loss_curve

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def tex(text: object) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _SPECIAL[m.group()], str(text))


def _model(name: str) -> str:
    return tex(name.rstrip("/").split("/")[-1])


def _pct(x: float | None) -> str:
    return "--" if x is None else f"{100 * x:.1f}"


def _ratio(x: float | None) -> str:
    return "--" if x is None else f"{x:.1f}$\\times$"


def _tabular(columns: str, header: Sequence[str], rows: Sequence[Sequence[str]], empty: str, width: str = "") -> str:
    """A booktabs table; with `width` a `tabularx` of that width (its X columns wrap)."""
    environment, size = ("tabularx", f"{{{width}}}") if width else ("tabular", "")
    lines = [f"\\begin{{{environment}}}{size}{{{columns}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    if rows:
        lines += [" & ".join(r) + " \\\\" for r in rows]
    else:
        lines.append(f"\\multicolumn{{{len(header)}}}{{l}}{{\\emph{{{tex(empty)}}}}} \\\\")
    lines += ["\\bottomrule", f"\\end{{{environment}}}", ""]
    return "\n".join(lines)


# what the text baselines' accuracies depend on beside the model pair: the questions asked and the prompt
BASELINE_QUESTIONS = ("data.source", "data.synthetic_seed", "eval.split", "eval.num_questions", "data.num_shots")


def baseline_key(facts) -> tuple[str, str, tuple[str, ...]]:
    """(source, target, question set): runs with one key share their text baselines."""
    return facts.source_model, facts.target_model, tuple(facts.params.get(k, "") for k in BASELINE_QUESTIONS)


def main_results(data: SuiteData) -> str:
    """The text baselines and the chosen bridges: validation (which selects) beside test (which
    reports, where the runs were tested), with the bridge's distinct outputs and guess accuracy."""
    # (column prefix, accuracy columns) of each evaluation shown (`tables.summary_row`)
    splits = [("", tables.VALIDATION_COLUMN)]
    if any(run.test for run in data.runs):
        splits.append((TEST_PREFIX, tables.TEST_COLUMN))
    tested = len(splits) > 1
    labels = " (val / test)" if tested else " (val)"
    header = ["Method", "$K$", "Compression", "Peak (val)", "Final (val) [95\\% CI]"]
    header += ["Test [95\\% CI] (step)"] if tested else []
    header += [f"Distinct{labels}", f"Guess{labels}", "Verdict"]
    cell = lambda r, name: tables.accuracy_cell(r, name, missing="--")  # noqa: E731
    rows, first = [], {}
    for run in data.runs:  # the text baselines, once per model pair and question set
        first.setdefault(baseline_key(run.facts), run)
    # what tells the question sets apart, where the suite holds several (a task grid): named in each baseline row
    varying = {name for i, name in enumerate(BASELINE_QUESTIONS) if len({key[2][i] for key in first}) > 1}
    for key, run in first.items():
        f, r = run.facts, tables.summary_row(run)
        questions = "".join(
            ", " + tex(value if name == "data.source" else f"{name}={value}")
            for name, value in zip(BASELINE_QUESTIONS, key[2]) if name in varying
        )
        for system, model, ratio in ((SOURCE, f.source_model, "--"), (TARGET, f.target_model, "1.0$\\times$")):
            accuracies = [cell(r, columns[system]) for _, columns in splits]
            rows.append([f"{system.title()} alone ({_model(model)}{questions})", "--", ratio, "--", *accuracies, "--", "--", "baseline"])
    chosen = [r for r in data.runs if r.verdict in ("headline", "control")]
    if not chosen and data.runs:  # no publishable row: show the best run, marked by its verdict
        chosen = [max(data.runs, key=lambda r: r.facts.final if r.facts.final is not None else -1)]
    for run in chosen:
        f, r = run.facts, tables.summary_row(run)
        step = r[TEST_PREFIX + "step"]
        test = [f"{cell(r, tables.TEST_COLUMN[BRIDGED])} ({step})" if step is not None else "--"] if tested else []
        distinct = " / ".join("--" if r[p + "distinct_outputs"] is None else str(r[p + "distinct_outputs"]) for p, _ in splits)
        guess = " / ".join(_pct(r[p + "guess"]) for p, _ in splits)
        role = "Control" if f.kind == "soft_prompt" else "Bridge"  # a trained soft prompt reads no source
        rows.append([f"{role}: {tex(run.label)}", str(f.K), _ratio(f.compression_ratio), _pct(f.peak),
                     cell(r, tables.VALIDATION_COLUMN[BRIDGED]), *test, distinct, guess, tex(run.verdict or "--")])
    return _tabular("lrrr" + "r" * len(splits) + "rrl", header, rows, "no finished runs")


def ablations(data: SuiteData) -> str:
    """Every run with its full recorded change, wrapped in a column that takes the rest of the line."""
    header = ["Run", "Changes", "Peak", "Final", "$\\Delta$", "Invalid", "Verdict"]
    rows = [
        [tex(run.label), tex(tables.changes(run.facts)), _pct(run.facts.peak),
         _pct(run.facts.final), _pct(run.facts.degradation), _pct(run.facts.invalid_rate), tex(run.verdict or "--")]
        for run in data.runs
    ]
    return _tabular("l>{\\raggedright\\arraybackslash}Xrrrrl", header, rows, "no finished runs", width="\\linewidth")


_SPLITS = {"test": ("test", tables.TEST_COLUMN), "val": ("val (final)", tables.VALIDATION_COLUMN)}  # name, accuracy columns


def compression(data: SuiteData) -> str:
    """Each run's compression and its reported accuracy (`SuiteRun.quality`: test, else final validation)."""
    header = ["Run", "$K$", "Prompt tokens", "Compression", "Bridged [95\\% CI]", "Split"]
    ordered = sorted(data.runs, key=lambda r: (r.facts.compression_ratio is None, r.facts.compression_ratio or 0, r.facts.K))
    rows = []
    for run in ordered:
        quality = run.quality()
        split, columns = _SPLITS[quality[0]] if quality else ("--", None)
        tokens = run.facts.prompt_tokens_mean
        accuracy = tables.accuracy_cell(tables.summary_row(run), columns[BRIDGED], missing="--") if columns else "--"
        rows.append([tex(run.label), str(run.facts.K), "--" if tokens is None else f"{tokens:.0f}", _ratio(run.facts.compression_ratio),
                     accuracy, split])
    return _tabular("lrrrrl", header, rows, "no finished runs")


def _names(labels: Sequence[str]) -> str:
    return ", ".join(tex(label) for label in labels)


def figure_captions(data: SuiteData) -> dict[str, str]:
    """Each figure's caption, saying what it plots for this suite: which loss, which split, which runs."""
    runs = data.runs
    losses = {r.label: loss_curve(r) for r in runs}
    total = [label for label, (key, points) in losses.items() if key == LOSS and points]
    lm = f"\\texttt{{{tex(LM_LOSS)}}}"
    if any(key == LM_LOSS for key, _ in losses.values()):
        loss = f"the answer NLL, the loss's language-modelling term {lm}"
        loss += f"; dashed: the total loss, for the runs that logged no {lm} ({_names(total)})" if total else ""
    else:
        loss = f"the total training loss (no run logged its language-modelling term {lm})"
    untested = [r.label for r in runs if (r.quality() or ("",))[0] == "val"]
    hollow = f" Hollow markers: final validation accuracy, for the runs with no test evaluation ({_names(untested)})." if untested else ""
    members, left_out = k_sweep(runs)
    ks = sorted({r.facts.K for r in members})
    sweep = ("Bridged accuracy (\\%) on the held-out test questions against the number of soft tokens $K$, with 95\\% Wilson"
             " intervals, for the runs whose recorded configuration differs from the suite's base in $K$ alone." + hollow)
    if not members:
        sweep += " No run does, so the figure is empty."
    elif len(ks) == 1:
        sweep += f" Only $K={ks[0]}$ is among them: one point, no trade-off can be read."
    if left_out:
        sweep += (f" Left out: {_names(left_out)}, which also change other settings or recorded no change"
                  " (the figure says which; Table~\\ref{tab:ablations} lists every change).")
    return {
        "training_curves": (
            "Left: bridged validation accuracy (\\%) at each evaluation, with 95\\% Wilson intervals over the evaluation's"
            " questions (from its records); horizontal lines are the text baselines on the final evaluation, bands their"
            f" intervals. Right: {loss}, smoothed when logged at many steps."
        ),
        "stability": (
            "Peak (light) and final (solid) bridged validation accuracy (\\%) of each run, with the text baselines and their"
            " 95\\% intervals; the label above each pair is the drop from peak to final in percentage points, and a dot on"
            " the axis marks an accuracy of 0."
        ),
        "sequence_length": sweep,
        "compression_quality": (
            "Bridged accuracy (\\%) on the held-out test questions, with 95\\% Wilson intervals, against the compression"
            " ratio (prompt tokens the target would read as text, divided by $K$); a star is the target model alone reading"
            " the full prompt (1$\\times$). The test evaluates once the translator that validation selected, so unlike the"
            " validation peak it is not biased upward." + hollow
        ),
        "content_vs_k": (
            "Fraction recovered against $K$: the share of the gold solution's log-likelihood gap between no question"
            " and the full text prompt that the soft tokens close, with 95\\% bootstrap intervals over questions."
        ),
    }


def paper(data: SuiteData) -> str:
    first = data.runs[0].facts if data.runs else None
    pairs = dict.fromkeys((r.facts.source_model, r.facts.target_model) for r in data.runs)  # every direction, in run order
    pair = "; ".join(f"{_model(source)} $\\rightarrow$ {_model(target)}" for source, target in pairs)
    split = tex(first.params.get("eval.split", "")) if first else ""
    n = first.n_questions if first else 0
    tested = next((run.test for run in data.runs if run.test), None)
    test_text = f" The translator each run selected on them was then tested once on {tested.n} held-out test questions." if tested else ""
    captions = figure_captions(data)
    figures = "\n".join(  # at natural size: drawn at most figures.PRINT_WIDTH wide, text at its drawn size
        f"\\begin{{figure}}[t]\n  \\centering\n  \\includegraphics{{figures/{name}.pdf}}\n"
        f"  \\caption{{{captions[name]}}}\n  \\label{{fig:{name}}}\n\\end{{figure}}\n"
        for name in FIGURES
    )
    return rf"""\documentclass[11pt]{{article}}
\usepackage[margin=1in]{{geometry}}
\usepackage{{booktabs}}
\usepackage{{array}}
\usepackage{{tabularx}}
\usepackage{{graphicx}}
\usepackage{{float}}

\title{{Latent bridges between language models: suite \texttt{{{tex(data.suite)}}}}}
\author{{}}
\date{{}}

\begin{{document}}
\maketitle

\begin{{abstract}}
A trained translator turns the hidden states of a frozen source model into $K$ soft tokens
that a frozen target model reads in place of its text prompt. This draft reports the
{len(data.runs)} runs{tables.finished_part(data.runs)} of suite \texttt{{{tex(data.suite)}}} ({pair}), evaluated on {n}
{split} questions.{test_text} A result is a headline only when the bridged target beats the target alone
with statistical support on the same questions.
\end{{abstract}}

\section{{Main results}}
\begin{{table}}[H]
  \centering
  \caption{{Accuracy (\%) of the text baselines and the bridge, with 95\% Wilson score intervals.
  Validation (val) selects: its peak picks the translator and the verdict judges its final
  evaluation; test reports that translator (trained to the step shown) and the baselines on
  held-out questions. Distinct: different texts the bridged target wrote; guess: the accuracy of
  giving its most common answer to every question. Compression is prompt tokens divided by $K$
  (by prompt tokens $+ K$ when the target reads the text prompt after the soft tokens).}}
  \label{{tab:main}}
  \resizebox{{\linewidth}}{{!}}{{\input{{tables/main_results}}}}
\end{{table}}

\section{{Training and stability}}
See Figures~\ref{{fig:training_curves}} and~\ref{{fig:stability}}.

\section{{Ablations}}
\begin{{table}}[H]
  \centering
  \small
  \caption{{Every run of the suite: its full change against the suite's base as recorded at submit,
  peak and final bridged validation accuracy (\%), their difference $\Delta$ (points), invalid
  answers (\%) and the verdict.}}
  \label{{tab:ablations}}
  \input{{tables/ablations}}
\end{{table}}

\section{{Sequence length and compression}}
\begin{{table}}[H]
  \centering
  \caption{{Compression and quality: the bridged accuracy (\%) with its 95\% Wilson interval on the
  held-out test questions, or on the final validation evaluation for a run without a test (Split).}}
  \label{{tab:compression}}
  \input{{tables/compression}}
\end{{table}}

{figures}
\end{{document}}
"""


def write_latex(data: SuiteData, out: Path) -> list[Path]:
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in (("main_results", main_results), ("ablations", ablations), ("compression", compression)):
        path = tables / f"{name}.tex"
        path.write_text(make(data))
        written.append(path)
    path = out / "paper.tex"
    path.write_text(paper(data))
    return written + [path]


def compile_pdf(folder: Path, timeout: float = 120) -> Path:
    """pdflatex paper.tex twice (for references) in `folder`; the PDF, or RuntimeError with the log's errors."""
    if shutil.which("pdflatex") is None:
        raise RuntimeError("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    for _ in range(2):
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
            cwd=folder, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if done.returncode != 0:
            errors = [line for line in done.stdout.splitlines() if line.startswith("!")] or done.stdout.splitlines()[-20:]
            raise RuntimeError("pdflatex failed on paper.tex:\n" + "\n".join(errors))
    return folder / "paper.pdf"
