"""The ``fulcrum`` command as a user meets it: help on every flag, --version, errors early."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulcrum import cli
from fulcrum.lab import simulate as simulate_cli


def parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from parsers(child)


@pytest.mark.parametrize(
    "parser", [cli.build_parser(), simulate_cli.build_parser()], ids=["fulcrum", "simulate"]
)
def test_every_flag_has_help_text(parser: argparse.ArgumentParser) -> None:
    missing = [
        f"{prog} {'/'.join(action.option_strings)}"
        for prog, p in parsers(parser)
        for action in p._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
        and not action.help
    ]
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("fulcrum 0.")


def test_a_mistyped_workload_is_refused_before_a_cluster_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["compare", "--workload", "defualt", "--name", "never-started"]) == 2
    assert "--workload 'defualt': use one of default, cpu050" in capsys.readouterr().err


def test_policies_lists_what_can_be_configured(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "Archimedes" in out and "rebuild hooks: leader-aware, ready" in out


NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"n{i},32000,65536,0,\n" for i in range(3))
PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + "".join(
    f"p{i},1000,1024,0,0,\n" for i in range(5)
)


def cpu_trace(tmp_path: Path) -> list[str]:
    (tmp_path / "n.csv").write_text(NODES)
    (tmp_path / "p.csv").write_text(PODS)
    return ["--nodes", str(tmp_path / "n.csv"), "--pods", str(tmp_path / "p.csv")]


def test_cpu_only_nodes_get_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate_cli.main([*cpu_trace(tmp_path), "--policy", "bestfit"]) == 2
    assert "no node has a GPU" in capsys.readouterr().err
    assert simulate_cli.main([*cpu_trace(tmp_path), "--policy", "bestfit", "--in-order"]) == 0
    assert "placed 5/5, nodes used" in capsys.readouterr().out


def test_json_dash_is_standard_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*cpu_trace(tmp_path), "--policy", "bestfit", "--in-order", "--json", "-"]
    assert simulate_cli.main(args) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["in_order"]["placed"] == 5
    assert not (Path.cwd() / "-").exists()


def test_progress_in_a_log_is_lines_not_carriage_returns() -> None:
    log = io.StringIO()
    report = simulate_cli._progress(log, seed=7)
    for done in range(1, 1001):
        report(done, 1000)
    assert "\r" not in log.getvalue()
    assert log.getvalue().count("\n") == 11  # 0 %, 10 %, ..., 100 %
