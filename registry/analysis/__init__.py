"""`python -m registry analyze --suite NAME --out DIR`: a suite's runs -> the paper's assets.

collect (MLflow runs, verdicts) -> tables (ablation_results.json, summary.md/.csv) ->
figures (PDF + PNG) -> latex (tables/*.tex, paper.tex); `analyze` writes them all and logs
them as artifacts of an analysis run in the suite's experiment.
"""

from __future__ import annotations

from registry.analysis.analyze import AnalysisResult, analyze

__all__ = ["AnalysisResult", "analyze"]
