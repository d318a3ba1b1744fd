"""Reports: Rich tables for the terminal and Markdown for pull requests, from results and outcomes."""

from __future__ import annotations

from effkit.report.text import bench_markdown, bench_table, fmt_ms, inspect_tables, outcome_markdown, outcome_table
from effkit.util import fmt_bytes, fmt_speedup

__all__ = ["bench_markdown", "bench_table", "fmt_bytes", "fmt_ms", "fmt_speedup", "inspect_tables", "outcome_markdown",
           "outcome_table"]
