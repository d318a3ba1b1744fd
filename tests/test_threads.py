"""One thread policy for every command: --threads, else the cores free now, printed the same way."""

import json
import re

import pytest

from conftest import FAST, NO_BAR, spec

POLICY = re.compile(r"^(1 thread|\d+ threads) \(the free cores of \d+; --threads N to change\)$", re.M)


def _threads_line(stdout: str) -> str:
    found = POLICY.search(stdout)
    assert found, stdout
    return found.group(0)


def test_bench_and_compare_default_to_the_free_cores_and_say_so(cli):
    code, bench_out, _ = cli("bench", spec("mlp"), *FAST, "--json", "b.json")
    assert code == 0, bench_out
    code, compare_out, _ = cli("compare", spec("mlp"), spec("mlp"), "--pairs", "2", "--block-time", "0.01",
                               "--warmup", "1", "--json", "c.json")
    assert code in (0, 1), compare_out
    for out in (bench_out, compare_out):
        assert "1 threads" not in out
        _threads_line(out)
    bench_threads = json.load(open("b.json"))["runs"][0]["threads"]
    assert _threads_line(bench_out).startswith(f"{bench_threads} thread")
    compare_threads = json.load(open("c.json"))["threads"]
    assert _threads_line(compare_out).startswith(f"{compare_threads} thread")


@pytest.mark.parametrize("command", ["bench", "compare"])
def test_threads_option_overrides_the_policy(cli, command):
    models = [spec("mlp")] if command == "bench" else [spec("mlp"), spec("mlp"), "--pairs", "2", "--block-time", "0.01"]
    code, out, _ = cli(command, *models, "--threads", "2", "--warmup", "1", "--iterations", "3", "--json", "r.json")
    assert code in (0, 1), err
    assert "2 threads (--threads)" in out.splitlines()
    result = json.load(open("r.json"))
    assert (result["runs"][0]["threads"] if command == "bench" else result["threads"]) == 2


def test_prune_measures_with_the_printed_threads(cli):
    code, out, _ = cli("prune", spec("mlp"), "--ratio", "0.25", "-o", "p.pt2", "--threads", "1", *FAST, *NO_BAR,
                       "--json", "r.json")
    assert code == 0, out
    assert "1 thread (--threads)" in out.splitlines()


def _options(command: str) -> set[str]:
    import typer

    from effkit.cli.common import app

    group = typer.main.get_command(app)
    return {opt for p in group.commands[command].params for opt in p.opts}


TIMING = {"--threads", "--warmup", "--iterations", "--min-time"}


@pytest.mark.parametrize("command", ["bench", "prune", "quantize", "distill", "compress"])
def test_commands_that_measure_take_the_threads_and_timing_options(command):
    """The README's Tour: these take --threads and the timing options."""
    assert TIMING <= _options(command)


def test_export_takes_no_timing_options_as_the_readme_says():
    assert not TIMING & _options("export")
    assert "--threads" in _options("compare")
