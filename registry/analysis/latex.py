"""LaTeX tables (main_results, ablations, compression) and a `paper.tex` skeleton.

Each table file holds a bare `tabular` (booktabs), so the paper sets the float and caption.
Everything needs only Debian's texlive-latex-base and texlive-latex-recommended.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from latentbridge.metric_names import BRIDGED, SOURCE, TARGET, TEST_PREFIX
from registry.analysis.collect import SuiteData
from registry.analysis import tables
from registry.analysis.figures import FIGURES

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


def _tabular(columns: str, header: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    lines = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    if rows:
        lines += [" & ".join(r) + " \\\\" for r in rows]
    else:
        lines.append(f"\\multicolumn{{{len(header)}}}{{l}}{{\\emph{{{tex(empty)}}}}} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


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
    rows, seen = [], set()
    for run in data.runs:  # the text baselines, once per model pair
        f, r = run.facts, tables.summary_row(run)
        if (f.source_model, f.target_model) in seen:
            continue
        seen.add((f.source_model, f.target_model))
        for system, model, ratio in ((SOURCE, f.source_model, "--"), (TARGET, f.target_model, "1.0$\\times$")):
            accuracies = [cell(r, columns[system]) for _, columns in splits]
            rows.append([f"{system.title()} alone ({_model(model)})", "--", ratio, "--", *accuracies, "--", "--", "baseline"])
    chosen = [r for r in data.runs if r.verdict in ("headline", "control")]
    if not chosen and data.runs:  # no publishable row: show the best run, marked by its verdict
        chosen = [max(data.runs, key=lambda r: r.facts.final if r.facts.final is not None else -1)]
    for run in chosen:
        f, r = run.facts, tables.summary_row(run)
        step = r[TEST_PREFIX + "step"]
        test = [f"{cell(r, tables.TEST_COLUMN[BRIDGED])} ({step})" if step is not None else "--"] if tested else []
        distinct = " / ".join("--" if r[p + "distinct_outputs"] is None else str(r[p + "distinct_outputs"]) for p, _ in splits)
        guess = " / ".join(_pct(r[p + "guess"]) for p, _ in splits)
        rows.append([f"Bridge: {tex(run.label)}", str(f.K), _ratio(f.compression_ratio), _pct(f.peak),
                     cell(r, tables.VALIDATION_COLUMN[BRIDGED]), *test, distinct, guess, tex(run.verdict or "--")])
    return _tabular("lrrr" + "r" * len(splits) + "rrl", header, rows, "no finished runs")


def ablations(data: SuiteData) -> str:
    header = ["Run", "Changes", "Peak", "Final", "$\\Delta$", "Invalid", "Verdict"]
    rows = []
    for run in data.runs:
        f = run.facts
        changes = tables.changes(f, short_keys=True)
        if len(changes) > 60:
            changes = changes[:57] + "..."
        rows.append([tex(run.label), f"\\small {tex(changes)}", _pct(f.peak), _pct(f.final), _pct(f.degradation), _pct(f.invalid_rate), tex(run.verdict or "--")])
    return _tabular("llrrrrl", header, rows, "no finished runs")


def compression(data: SuiteData) -> str:
    header = ["Run", "$K$", "Prompt tokens", "Compression", "Peak", "Final"]
    ordered = sorted(data.runs, key=lambda r: (r.facts.compression_ratio is None, r.facts.compression_ratio or 0, r.facts.K))
    rows = [
        [tex(r.label), str(r.facts.K), "--" if r.facts.prompt_tokens_mean is None else f"{r.facts.prompt_tokens_mean:.0f}",
         _ratio(r.facts.compression_ratio), _pct(r.facts.peak), _pct(r.facts.final)]
        for r in ordered
    ]
    return _tabular("lrrrrr", header, rows, "no finished runs")


FIGURE_CAPTIONS = {
    "training_curves": "Bridged accuracy (left) and training loss (right) over training steps.",
    "stability": "Peak versus final bridged accuracy of each run; the number above each pair is the drop in points.",
    "sequence_length": "Accuracy against the number of soft tokens $K$ for runs that differ only in $K$.",
    "compression_quality": "Final accuracy against the compression ratio (prompt tokens the target would read as text, divided by $K$).",
    "content_vs_k": (
        "Fraction recovered against $K$: the share of the gold solution's log-likelihood gap between no question"
        " and the full text prompt that the soft tokens close, with 95\\% bootstrap intervals over questions."
    ),
}


def paper(data: SuiteData) -> str:
    first = data.runs[0].facts if data.runs else None
    pair = f"{_model(first.source_model)} $\\rightarrow$ {_model(first.target_model)}" if first else ""
    split = tex(first.params.get("eval.split", "")) if first else ""
    n = first.n_questions if first else 0
    tested = next((run.test for run in data.runs if run.test), None)
    test_text = f" The translator each run selected on them was then tested once on {tested.n} held-out test questions." if tested else ""
    figures = "\n".join(
        f"\\begin{{figure}}[t]\n  \\centering\n  \\includegraphics[width=\\linewidth]{{figures/{name}.pdf}}\n"
        f"  \\caption{{{FIGURE_CAPTIONS[name]}}}\n  \\label{{fig:{name}}}\n\\end{{figure}}\n"
        for name in FIGURES
    )
    return rf"""\documentclass[11pt]{{article}}
\usepackage[margin=1in]{{geometry}}
\usepackage{{booktabs}}
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
{len(data.runs)} finished runs of suite \texttt{{{tex(data.suite)}}} ({pair}), evaluated on {n}
{split} questions.{test_text} A result is a headline only when the bridged target beats the target alone
with statistical support on the same questions.
\end{{abstract}}

\section{{Main results}}
\begin{{table}}[H]
  \centering
  \caption{{Accuracy (\%) of the text baselines and the bridge, with 95\% bootstrap intervals.
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
  \caption{{Every run of the suite: changes against the suite's base, peak and final bridged
  accuracy (\%), their difference $\Delta$, invalid answers (\%) and the verdict.}}
  \label{{tab:ablations}}
  \resizebox{{\linewidth}}{{!}}{{\input{{tables/ablations}}}}
\end{{table}}

\section{{Sequence length and compression}}
\begin{{table}}[H]
  \centering
  \caption{{Compression and quality.}}
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
