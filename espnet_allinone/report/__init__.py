"""Scoring (sclite), the results table (RESULTS.md), the WER-vs-size plot, CPU RTF."""

from espnet_allinone.report.results import ReportError, Row, pareto_front, to_markdown

__all__ = ["ReportError", "Row", "pareto_front", "to_markdown"]
