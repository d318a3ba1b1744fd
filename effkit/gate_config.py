"""Gate configuration and CI outputs: `[tool.effkit.gates]` / `[gates]` TOML, JUnit and summary files."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from effkit.errors import UsageError
from effkit.files import check_not_read, loads_toml, mark_read, write_text
from effkit.gates import GateReport, check_units
from effkit.results import lookup
from effkit.specs import Threshold, parse_threshold


CONFIG_KEYS = ("fail-on", "strict")


def _key_line(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return i
    return None


def _read_toml(path: Path) -> dict:
    mark_read(path)
    try:
        return loads_toml(path.read_text(), str(path))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def load_gate_config(path: str | Path | None = None,
                     search_dir: str | Path = ".") -> tuple[list[str], bool, Path | None]:
    """Gates from a config file: (fail-on list, strict, file used).

    `path`: an effkit.toml (table `[gates]`) or a pyproject.toml (table `[tool.effkit.gates]`).
    Without it, `effkit.toml` then `pyproject.toml` in `search_dir` are used if they have gates.
    """
    if path is not None:
        candidates = [Path(path)]
        if not candidates[0].is_file():
            raise UsageError(f"no such config file: {path}")
    else:
        candidates = [p for p in (Path(search_dir) / "effkit.toml", Path(search_dir) / "pyproject.toml") if p.is_file()]
    for file in candidates:
        data = _read_toml(file)
        table_name = "tool.effkit.gates" if file.name == "pyproject.toml" else "gates"
        table = lookup(data, table_name)
        if table is None:
            if path is not None:
                raise UsageError(f"{file} has no [{table_name}] table", 'add e.g. fail-on = ["latency.p50:+5%"]')
            continue
        text = file.read_text()
        if not isinstance(table, dict):
            raise UsageError(f"{file}: {table_name} must be a table")
        for key in table:
            if key not in CONFIG_KEYS:
                line = _key_line(text, key)
                raise UsageError(f"{file}:{line or '?'}: unknown key {key!r} in [{table_name}]",
                                 f"known keys: {', '.join(CONFIG_KEYS)}")
        fail_on = table.get("fail-on", [])
        if isinstance(fail_on, str):
            fail_on = [fail_on]
        if not isinstance(fail_on, list) or not all(isinstance(x, str) for x in fail_on):
            raise UsageError(f"{file}:{_key_line(text, 'fail-on') or '?'}: fail-on must be a list of strings",
                             'e.g. fail-on = ["latency.p50:+5%", "size:<=12MB"]')
        strict = table.get("strict", False)
        if not isinstance(strict, bool):
            raise UsageError(f"{file}:{_key_line(text, 'strict') or '?'}: strict must be true or false")
        for item in fail_on:  # a bad threshold names the file it came from
            try:
                parse_threshold(item)
            except UsageError as e:
                raise UsageError(f"{file}:{_key_line(text, 'fail-on') or '?'}: {e.message}", e.hint) from None
        return list(fail_on), strict, file
    return [], False, None


def write_reports(report: GateReport, *, junit: str | Path | None = None, force: bool = False,
                  summary_text: str | None = None) -> list[str]:
    """Write JUnit XML, and append Markdown (default: the gate table) to $GITHUB_STEP_SUMMARY when it is set."""
    written = []
    if junit:
        write_text(junit, report.junit(), force)
        written.append(str(junit))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        check_not_read(summary, "$GITHUB_STEP_SUMMARY")
        with open(summary, "a", encoding="utf-8") as f:  # appended: other steps write there too
            f.write((summary_text or report.markdown()) + "\n")
        written.append(summary)
    return written


def thresholds_from(fail_on: Sequence[str] | None, config: str | Path | None) -> tuple[list[Threshold], bool]:
    """The gates to check: --fail-on when given, else the config file's; plus its `strict`."""
    if fail_on:
        items, strict = list(fail_on), load_gate_config(config)[1] if config else False
    else:
        items, strict, _ = load_gate_config(config)
    parsed = [parse_threshold(t) for t in items]
    for t in parsed:  # before any measuring: a compare takes a while
        check_units(t)
    return parsed, strict
