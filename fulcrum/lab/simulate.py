"""``fulcrum simulate``: replay an openb-format trace with one policy.

    fulcrum simulate --nodes NODES.csv --pods PODS.csv --policy NAME
                     [--seed S ...] [--tune 1.3] [-o text|json|yaml]
                     [--output-file OUT] [--plot OUT.png]

Progress goes to stderr, the result to stdout (``-o text``: the summary; json or
yaml: the per-seed results, with the summary on stderr) or to ``--output-file``
(then the summary on stdout). Bad input (trace, policy name, options) prints one
``error:`` line naming the file, line and column and exits with status 2; no
stack traces for user errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from fulcrum import output
from fulcrum.lab import traces
from policies.registry import PluginError, UnknownPolicyError, default_registry
from scheduler.policy import PolicyContext
from scheduler.replay import Progress, ReplayResult, nodes_lower_bound, replay, typical_workload
from scheduler.sequence import replay_in_order
from scheduler.trace import NodeTrace, PodTrace, TraceError, load_nodes, load_pods

EXIT_OK = 0
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _pod_list(value: str) -> Path:
    """A path, or the name of a shipped openb workload (when no such file exists)."""
    path = Path(value)
    return traces.pod_list(value) if value in traces.WORKLOADS and not path.exists() else path


def _node_list(value: str) -> Path:
    path = Path(value)
    return traces.node_list(value) if value in traces.NODE_LISTS and not path.exists() else path


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fulcrum simulate",
        description="Replay a GPU cluster trace (openb format) with a placement policy, "
        "using the FGD paper's protocol.",
    )
    parser.add_argument(
        "--nodes",
        type=_node_list,
        default=None,
        help="node list CSV, or gpu_node / all_node for the openb trace Fulcrum ships "
        "(default: gpu_node, the FGD paper's 1,213 GPU nodes)",
    )
    parser.add_argument(
        "--pods",
        required=True,
        type=_pod_list,
        help=f"pod list CSV, or one of the shipped openb workloads: {', '.join(traces.WORKLOADS)}",
    )
    parser.add_argument("--policy", required=True, help="policy name (case-insensitive)")
    parser.add_argument("--seed", type=int, nargs="+", default=[42], help="one or more seeds")
    parser.add_argument(
        "--tune",
        type=float,
        default=1.3,
        help="tune the GPU demand to this multiple of capacity (default 1.3); 0 disables",
    )
    parser.add_argument(
        "--random-ties",
        action="store_true",
        help="break score ties at random per pod, as kube-scheduler does "
        "(default: a node ranking fixed per run, as the FGD paper's simulator)",
    )
    parser.add_argument(
        "--in-order",
        action="store_true",
        help="place the pods in the file's order, each once, learning the workload as they "
        "come (the live extender's model), instead of the FGD protocol's shuffle and given mix",
    )
    output.add_output(
        parser, text="a summary per seed, also printed beside json or yaml on the stream they leave"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="deprecated: -o json --output-file FILE (- for standard output)",
    )
    parser.add_argument("--plot", type=Path, help="write the allocation curve as a PNG here")
    return parser


def _progress(stream: TextIO, seed: int) -> Progress:
    """A line redrawn in place on a terminal; in a log, a line every 10 % instead of ``\r``s."""
    terminal = stream.isatty()
    shown = [-1]

    def report(done: int, total: int) -> None:
        if terminal:
            stream.write(f"\r  seed {seed}: {done}/{total} pods" + ("\n" if done == total else ""))
        elif done * 10 // total > shown[0]:
            shown[0] = done * 10 // total
            stream.write(f"  seed {seed}: {done}/{total} pods\n")
        stream.flush()

    return report


def _emit(args: argparse.Namespace, document: object, text: str, out: TextIO, err: TextIO) -> None:
    """The result as ``-o`` asks; beside JSON or YAML, the summary, on the stream it leaves."""
    if args.output != "text":
        (out if args.output_file is not None else err).write(text)
    output.emit(document, args.output, text=text, file=args.output_file, out=out, err=err)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _plot(results: list[ReplayResult], policy: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(results[0].alloc_curve))
    for r in results:
        y = [np.nan if v is None else v for v in r.alloc_curve]
        ax.plot(x, y, label=f"seed {r.seed}", linewidth=1)
    ax.plot(x, x, color="grey", linestyle=":", linewidth=0.8, label="arrived")
    ax.set_xlabel("arrived GPU workload (% of capacity)")
    ax.set_ylabel("GPU allocation (% of capacity)")
    ax.set_title(f"{policy}")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(seed: int, result: ReplayResult) -> str:
    curve = "  ".join(
        f"{x}:{_fmt(result.alloc_curve[x])}" for x in range(0, len(result.alloc_curve), 10)
    )
    return (
        f"seed {seed}: alloc@100 {_fmt(result.alloc_at_100)} %  alloc@130 "
        f"{_fmt(result.alloc_at_130)} %  final alloc {result.final_alloc_pct:.2f} %  "
        f"frag {result.final_frag_pct:.2f} %  failed {result.pods_failed}/{result.events}  "
        f"nodes used {result.nodes_used} (lower bound {result.nodes_lower_bound})  "
        f"{result.elapsed_s:.1f}s\n"
        f"  alloc % by arrived %: {curve}\n"
    )


def run_in_order(
    nodes: NodeTrace,
    pods: PodTrace,
    policy_name: str,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> int:
    """``--in-order``: every pod once, in the file's order, the workload learnt as they come."""
    registry = default_registry()
    snapshot = nodes.to_snapshot()
    requests = [pods.request(i) for i in range(len(pods))]
    result = replay_in_order(
        snapshot,
        requests,
        lambda workload: registry.create(policy_name, PolicyContext(workload=workload)),
    )
    demand = {
        "cpu": sum(p.cpu_milli for p in requests),
        "memory": sum(p.memory for p in requests),
        "gpu": sum(p.gpu_total_milli for p in requests),
    }
    text = (
        f"{policy_name}, in order: placed {result.placed}/{result.pods}, nodes used "
        f"{result.nodes_used} (lower bound {nodes_lower_bound(snapshot, demand)})\n"
    )
    text += "".join(f"  unplaced: {pods.names[i]} (line {i + 2})\n" for i in result.unplaced[:10])
    _emit(args, {"policy": policy_name, "in_order": result.to_json()}, text, out, err)
    return EXIT_OK


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    registry = default_registry()
    policy_name = registry.canonical(args.policy)
    args.nodes = args.nodes or traces.node_list("gpu_node")
    nodes = load_nodes(args.nodes)
    pods = load_pods(args.pods, known_models=frozenset(m for m in nodes.models if m))
    if args.in_order:
        return run_in_order(nodes, pods, policy_name, args, out, err)
    if nodes.total_gpu_milli == 0:
        err.write(
            f"fulcrum simulate: error: {args.nodes}: no node has a GPU, and the FGD protocol "
            "measures GPU allocation; use --in-order to place the pods and count the nodes\n"
        )
        return EXIT_USAGE
    target = typical_workload(pods)
    tune = args.tune if args.tune > 0 else None
    err.write(
        f"{len(nodes)} nodes ({int(nodes.gpu_count.sum())} GPUs), {len(pods)} pods, "
        f"{len(target)} typical pod types; policy {policy_name}\n"
    )
    results: list[ReplayResult] = []
    summaries: list[str] = []
    for seed in args.seed:
        policy = registry.create(policy_name, PolicyContext(seed=seed, workload=target))
        result = replay(
            nodes,
            pods,
            policy,
            seed=seed,
            tune=tune,
            workload=target,
            progress=_progress(err, seed),
            random_ties=args.random_ties,
        )
        results.append(result)
        summaries.append(_summary(seed, result))
    a100 = [r.alloc_at_100 for r in results if r.alloc_at_100 is not None]
    a130 = [r.alloc_at_130 for r in results if r.alloc_at_130 is not None]
    mean100 = round(float(np.mean(a100)), 2) if a100 else None
    mean130 = round(float(np.mean(a130)), 2) if a130 else None
    if len(results) > 1:
        summaries.append(
            f"mean over {len(results)} seeds: alloc@100 {_fmt(mean100)} %  "
            f"alloc@130 {_fmt(mean130)} %\n"
        )
    document = {
        "policy": policy_name,
        "nodes": str(args.nodes),
        "pods": str(args.pods),
        "tune": tune,
        "random_ties": args.random_ties,
        "mean": {"alloc_at_100": mean100, "alloc_at_130": mean130},
        "seeds": [r.to_json() for r in results],
    }
    _emit(args, document, "".join(summaries), out, err)
    if args.plot:
        _plot(results, policy_name, args.plot)
        err.write(f"wrote {args.plot}\n")
    return EXIT_OK


def _deprecated_json(args: argparse.Namespace) -> argparse.Namespace:
    """``--json FILE`` as ``-o json --output-file FILE``, ``--json -`` as ``-o json``."""
    if args.json is None:
        return args
    if args.output != "text" or args.output_file is not None:
        raise _UsageError("--json FILE is -o json --output-file FILE: give one or the other")
    args.output = "json"
    try:
        args.output_file = None if str(args.json) == "-" else output.output_file(str(args.json))
    except argparse.ArgumentTypeError as exc:
        raise _UsageError(f"argument --json: {exc}") from exc
    return args


def main(argv: list[str]) -> int:
    """Entry point for ``fulcrum simulate``; returns the process exit status."""
    try:
        args = _deprecated_json(build_parser().parse_args(argv))
    except _UsageError as exc:
        sys.stderr.write(f"fulcrum simulate: error: {exc}\n")
        return EXIT_USAGE
    try:
        return run(args, sys.stdout, sys.stderr)
    except (TraceError, UnknownPolicyError, PluginError) as exc:
        sys.stderr.write(f"fulcrum simulate: error: {exc}\n")
        return EXIT_USAGE
    except ImportError as exc:
        sys.stderr.write(f"fulcrum simulate: error: {exc.name or exc} is not installed\n")
        return EXIT_USAGE
    except OSError as exc:
        sys.stderr.write(f"fulcrum simulate: error: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
