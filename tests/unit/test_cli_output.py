"""The operator's CLI: ``-o text|json|yaml`` and ``--output-file``, ``--context``, one line and
exit 2 for an apiserver that cannot be reached or refuses, ``inspect``'s 1 against 2, and the
floors of ``bench`` and ``compare`` (no cluster runs here: the experiments are replaced by
their results)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from fulcrum import bench_cli, cli, output
from fulcrum.harness import cluster
from fulcrum.harness.cluster import ClusterError
from fulcrum.lab import bench, openb
from fulcrum.lab import simulate as simulate_cli
from fulcrum.run import failures, kubeconfig
from tests import builders
from tests.unit.test_cli import cpu_trace

ROOT = Path(__file__).resolve().parents[2]


# -o and --output-file


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_policies_print_the_same_document_as_json_and_yaml(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["policies", "-o", fmt]) == 0
    document = yaml.safe_load(capsys.readouterr().out)  # JSON is YAML too
    assert {
        "name": "Archimedes",
        "builtin": True,
        "source": "built-in",
        "reads": "resources only",
    } in document["policies"]
    assert document["rebuild_hooks"][:2] == ["leader-aware", "ready"]


def test_text_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policies"]) == 0
    assert "rebuild hooks: leader-aware, ready" in capsys.readouterr().out


def test_output_file_takes_the_result_off_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policies.yaml"
    assert cli.main(["policies", "-o", "yaml", "--output-file", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"wrote {out}\n"
    assert {
        "name": "FGD",
        "builtin": True,
        "source": "built-in",
        "reads": "resources only",
    } in yaml.safe_load(out.read_text())["policies"]


def test_an_output_file_in_a_missing_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "--output-file", str(tmp_path / "no" / "such.json")])
    assert done.value.code == 2


def test_yaml_takes_what_json_does() -> None:
    import numpy as np

    document = {"ratio": np.float64(0.5), "n": np.int64(3), "curve": [None, 1.5]}
    as_json = json.loads(output.render(document, "json", text=""))
    assert yaml.safe_load(output.render(document, "yaml", text="")) == as_json
    assert as_json == {"ratio": 0.5, "n": 3, "curve": [None, 1.5]}
    assert output.render(document, "text", text="a table") == "a table\n"


def test_simulate_takes_o_and_output_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*cpu_trace(tmp_path), "--policy", "bestfit", "--in-order"]
    assert simulate_cli.main([*args, "-o", "yaml"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["in_order"]["placed"] == 5
    assert "placed 5/5" in captured.err  # the summary, beside the document
    out = tmp_path / "run.json"
    assert simulate_cli.main([*args, "-o", "json", "--output-file", str(out)]) == 0
    captured = capsys.readouterr()
    assert "placed 5/5" in captured.out and f"wrote {out}" in captured.err
    assert json.loads(out.read_text())["in_order"]["placed"] == 5
    again = tmp_path / "again.json"
    assert simulate_cli.main([*args, "--json", str(again)]) == 0  # deprecated, still works
    assert json.loads(again.read_text()) == json.loads(out.read_text())
    assert simulate_cli.main([*args, "--json", str(again), "-o", "yaml"]) == 2


# --context


def test_context_picks_the_kubeconfig_context_and_its_users_token_file(tmp_path: Path) -> None:
    (tmp_path / "token-b").write_text("token-of-b")
    path = tmp_path / "config"
    path.write_text(
        """apiVersion: v1
kind: Config
current-context: a
contexts:
- {name: a, context: {cluster: a, user: a}}
- {name: b, context: {cluster: b, user: b}}
clusters:
- {name: a, cluster: {server: "https://a:6443"}}
- {name: b, cluster: {server: "https://b:6443"}}
users:
- {name: a, user: {token: token-of-a}}
- {name: b, user: {tokenFile: token-b}}
"""
    )
    assert kubeconfig.load(path)[0].host == "https://a:6443"
    cfg, _ = kubeconfig.load(path, context="b")
    assert cfg.host == "https://b:6443"
    assert cfg.refresh_api_key_hook is not None  # b's tokenFile is followed, not a's token
    with pytest.raises(kubeconfig.CredentialsError, match="Expected object with name c"):
        kubeconfig.load(path, context="c")


def test_context_is_a_flag_of_every_command_that_reads_a_cluster() -> None:
    parser = cli.build_parser()
    for argv in (["inspect"], ["explain", "ns/p"], ["serve"], ["rebuild"]):
        args = parser.parse_args([*argv, "--kubeconfig", "k", "--context", "c"])
        assert (str(args.kubeconfig), args.context) == ("k", "c")


# an apiserver that cannot be reached or refuses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def write_kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
"""
    )
    return path


def test_a_stopped_cluster_is_one_line_naming_the_server_and_exit_2(tmp_path: Path) -> None:
    port = free_port()
    config = write_kubeconfig(tmp_path, f"https://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "fulcrum.cli", "inspect", "--kubeconfig", str(config)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"fulcrum: error: cannot reach the apiserver at 127.0.0.1:{port}: connection refused\n"
    )


FORBIDDEN = (
    'nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the '
    "cluster scope"
)


@pytest.fixture
def forbidding_apiserver() -> Iterator[str]:
    """An apiserver on loopback that answers every request as RBAC denies alice's."""
    body = json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": FORBIDDEN}
        | {"reason": "Forbidden", "details": {"kind": "nodes"}, "code": 403}
    ).encode()

    class Forbid(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forbid)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["inspect"], ["explain", "ns/p"]])
def test_an_rbac_403_is_one_line_naming_the_permission_and_exit_2(
    command: list[str],
    forbidding_apiserver: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_kubeconfig(tmp_path, forbidding_apiserver)
    assert cli.main([*command, "--kubeconfig", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        'fulcrum: error: forbidden: User "alice" cannot list nodes at the cluster scope '
        '(RBAC needs verbs ["list"] on resources ["nodes"] in apiGroups [""])\n'
    )


def refusal(status: int, message: str) -> client.ApiException:
    exc = client.ApiException(status=status, reason="Forbidden" if status == 403 else "Nope")
    exc.body = json.dumps({"kind": "Status", "message": message}).encode()
    return exc


def test_a_namespaced_denial_names_the_namespace_and_group() -> None:
    message = (
        'reservations.fulcrum.io is forbidden: User "system:serviceaccount:x:y" cannot watch '
        'resource "reservations" in API group "fulcrum.io" in the namespace "team-a"'
    )
    assert failures.describe(refusal(403, message)) == (
        'forbidden: User "system:serviceaccount:x:y" cannot watch reservations.fulcrum.io in '
        'namespace "team-a" (RBAC needs verbs ["watch"] on resources ["reservations"] in '
        'apiGroups ["fulcrum.io"])'
    )
    assert failures.describe(refusal(403, "no idea")) == "forbidden (403): no idea"
    assert failures.describe(refusal(401, "Unauthorized")) == (
        "unauthorized (401): the apiserver refused the credentials: Unauthorized"
    )
    assert failures.describe(ValueError("x")) is None


# inspect: 1 broken, 2 failed


def test_inspect_exits_1_for_a_broken_invariant_and_2_for_its_own_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fulcrum import inspect_cli

    node = builders.node("n1", cpu="4", memory="16Gi")
    fits = builders.pod("a", node_name="n1", cpu="2")
    over = builders.pod("b", node_name="n1", cpu="4")  # with a: 6 cpu on a node of 4
    cluster_objects: list[Any] = [[node], [fits], [], []]
    monkeypatch.setattr(inspect_cli, "objects", lambda args: tuple(cluster_objects))
    monkeypatch.setattr(inspect_cli, "cluster_view", builders.cluster_view(None))  # no components
    argv = ["inspect", "--plan-seconds", "0"]

    assert cli.main([*argv, "-o", "json"]) == 0
    healthy = json.loads(capsys.readouterr().out)
    assert healthy["violations"] == []
    cluster_objects[1] = [fits, over]
    assert cli.main([*argv, "-o", "yaml"]) == 1
    assert yaml.safe_load(capsys.readouterr().out)["violations"]
    assert cli.main(argv) == 1
    assert "n1" in capsys.readouterr().out

    def unreadable(args: Any) -> Any:
        raise ClusterError("no cluster named 'gone'")

    monkeypatch.setattr(inspect_cli, "objects", unreadable)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "fulcrum: error: no cluster named 'gone'\n"
    assert cli.main(["inspect", "--name", "never-started"]) == 2  # no such local cluster
    with pytest.raises(SystemExit) as done:  # bad arguments
        cli.main(["inspect", "--name", "a", "--kubeconfig", "b"])
    assert done.value.code == 2


# the floors of bench and compare


def phase(scheduler: str, throughput: float, nodes_used: int, bound: int = 300) -> bench.Phase:
    return bench.Phase(
        scheduler=scheduler,
        pods=300,
        bound=bound,
        nodes_used=nodes_used,
        configmap_seconds=1.0,
        create_seconds=1.0,
        schedule_seconds=bound / throughput,
        latency={"sli": {"p50": 0.5}, "attempt": {"p50": 0.001}},
        apiserver_qps=100.0,
        cpu_seconds={},
        rss_mib={},
    )


def bench_result(scheduler: str = "both", fulcrum_bound: int = 300) -> bench.Bench:
    """default-scheduler at 100 pods/s; fulcrum-scheduler at 50 pods/s on 9 nodes, bound 7."""
    phases = {
        bench.DEFAULT: [phase(bench.DEFAULT, 100.0, 12)],
        bench.FULCRUM: [phase(bench.FULCRUM, 50.0, 9, fulcrum_bound)],
    }
    ran = bench.SCHEDULERS[scheduler]
    config = bench.Config(nodes=20, pods=300, configmaps=0, scheduler=scheduler, rebuild=0)
    return bench.Bench(config, 7, {s: p for s, p in phases.items() if s in ran}, None)


@pytest.fixture
def benched(monkeypatch: pytest.MonkeyPatch) -> list[bench.Bench]:
    """``fulcrum bench`` returns the first of these instead of running a cluster."""
    results = [bench_result()]
    monkeypatch.setattr(bench, "run_bench", lambda config, log: results[0])
    return results


@pytest.mark.parametrize(
    ("floors", "status", "verdict"),
    [
        (["--min-ratio", "2"], 1, "floor FAILED: --min-ratio 2: fulcrum-scheduler/default-"),
        (["--min-ratio", "0.5"], 0, "floor met: --min-ratio 0.5: "),
        (["--max-nodes-over-bound", "1"], 1, "FAILED: --max-nodes-over-bound 1: 2 nodes over"),
        (["--max-nodes-over-bound", "2"], 0, "floor met: --max-nodes-over-bound 2: 2 nodes over"),
        ([], 0, ""),
    ],
)
def test_bench_exits_1_when_a_floor_fails(
    benched: list[bench.Bench],
    capsys: pytest.CaptureFixture[str],
    floors: list[str],
    status: int,
    verdict: str,
) -> None:
    assert cli.main(["bench", *floors, "-o", "json"]) == status
    captured = capsys.readouterr()
    assert json.loads(captured.out)["lower_bound"] == 7  # the result, whatever the verdict
    assert verdict in captured.err
    if floors[:1] == ["--min-ratio"]:
        assert "throughput 0.50" in captured.err  # the measured value beside the floor


def test_a_pod_left_unbound_fails_the_nodes_floor(
    benched: list[bench.Bench], capsys: pytest.CaptureFixture[str]
) -> None:
    benched[0] = bench_result(fulcrum_bound=290)
    assert cli.main(["bench", "--max-nodes-over-bound", "5"]) == 1
    assert "10 pods left unbound" in capsys.readouterr().err


def test_a_floor_the_run_cannot_measure_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "run_bench", pytest.fail)  # no run at all
    for argv in (
        ["--scheduler", "fulcrum", "--min-ratio", "2"],
        ["--scheduler", "default", "--max-nodes-over-bound", "0"],
        ["--min-ratio", "0"],
    ):
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", *argv])
        assert done.value.code == 2
    assert "--min-ratio compares the two schedulers" in capsys.readouterr().err


def test_a_bench_run_that_errors_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(config: bench.Config, log: Any) -> bench.Bench:
        raise ClusterError("kube-apiserver did not start")

    monkeypatch.setattr(bench, "run_bench", broken)
    assert cli.main(["bench", "--min-ratio", "2"]) == 2
    assert capsys.readouterr().err == "fulcrum: error: kube-apiserver did not start\n"

    def bug(config: bench.Config, log: Any) -> bench.Bench:
        raise KeyError("nodeName")

    monkeypatch.setattr(bench, "run_bench", bug)
    assert cli.main(["bench"]) == 2  # not 1, the status of a failed floor
    assert "Traceback" in capsys.readouterr().err  # a bug keeps its traceback


def report(scheduler: str, throughput: float, nodes_used: int) -> openb.RunReport:
    return openb.RunReport(scheduler, 100, 100, nodes_used, 0, 1.0, 100 / throughput)


def test_compare_takes_the_same_floors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = [
        (report("default-scheduler", 100.0, 12), report(cluster.FULCRUM_SCHEDULER, 80.0, 10)),
        (report("default-scheduler", 100.0, 12), report(cluster.FULCRUM_SCHEDULER, 120.0, 11)),
        (report("default-scheduler", 100.0, 12), report(cluster.FULCRUM_SCHEDULER, 90.0, 10)),
    ]
    monkeypatch.setattr(cluster, "up", lambda *args, **kwargs: None)
    monkeypatch.setattr(cluster, "down", lambda *args, **kwargs: None)
    monkeypatch.setattr(openb, "compare", lambda *args, **kwargs: openb.Comparison(rounds, 9))
    argv = ["compare", "--rounds", "3", "-o", "json"]

    assert cli.main([*argv, "--min-ratio", "0.9", "--max-nodes-over-bound", "2"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["throughput_ratios"] == pytest.approx([0.8, 1.2, 0.9])
    assert "floor met: --min-ratio 0.9: fulcrum-scheduler/default-scheduler throughput 0.90" in (
        captured.err
    )  # the median of the rounds
    assert cli.main([*argv, "--min-ratio", "1"]) == 1
    assert cli.main([*argv, "--max-nodes-over-bound", "1"]) == 1  # round 2: 11 on a bound of 9
    assert "2 nodes over the lower bound" in capsys.readouterr().err


def test_no_throughput_is_no_floor_met(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["bench", "--min-ratio", "0.1"])
    figures = bench_cli.Figures(ratio=math.nan, nodes_over_bound=0)
    assert bench_cli.check_floors(args, figures, command="bench") == 1
    assert "FAILED: --min-ratio 0.1: fulcrum-scheduler/default-scheduler throughput nan" in (
        capsys.readouterr().err
    )
