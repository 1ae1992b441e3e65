"""``fulcrum bench``'s flags and command, and the floors it shares with ``fulcrum compare``; the
work is in ``fulcrum.lab.bench`` (imported only when the command runs, so other commands do not
pay for its imports)."""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from fulcrum import output
from fulcrum.lab import DEFAULT_MIX

if TYPE_CHECKING:
    from fulcrum.lab.bench import Bench
    from fulcrum.lab.openb import Comparison

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_nodes_to_score(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes-to-score",
        type=at_least(0, at_most=100),
        default=100,
        help="fulcrum-scheduler's percentageOfNodesToScore: 100 shows Fulcrum every feasible "
        "node, less is cheaper per pod and packs from a window of them, 0 is kube-scheduler's "
        "adaptive default (default %(default)s)",
    )


def at_least(minimum: int, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of ``minimum`` or more, and ``at_most`` or less if given
    (the ``fulcrum`` command's too)."""

    def parse(text: str) -> int:
        value = int(text)
        if at_most is not None and not minimum <= value <= at_most:
            raise argparse.ArgumentTypeError(f"{value}: must be {minimum}..{at_most}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be {minimum} or more")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return value


def add_floors(parser: argparse.ArgumentParser, *, rounds: str) -> None:
    """``--min-ratio`` and ``--max-nodes-over-bound``: a scale test that can fail a pipeline."""
    parser.add_argument(
        "--min-ratio",
        type=positive,
        default=None,
        metavar="R",
        help="floor: exit 1 unless fulcrum-scheduler's throughput (pods/s) is at least R times "
        f"default-scheduler's ({rounds})",
    )
    parser.add_argument(
        "--max-nodes-over-bound",
        type=at_least(0),
        default=None,
        metavar="N",
        help="floor: exit 1 if fulcrum-scheduler uses more than N nodes over the lower bound in "
        "any round, or leaves a pod unbound",
    )


@dataclass(frozen=True)
class Figures:
    """What the floors are checked against; None where the run did not measure it."""

    ratio: float | None  # fulcrum-scheduler's throughput over default-scheduler's
    nodes_over_bound: int | None  # fulcrum-scheduler's nodes used minus the lower bound, worst
    unbound: int = 0  # pods fulcrum-scheduler left unbound, worst round


def bench_figures(result: Bench) -> Figures:
    """The median rounds' throughput ratio (as the table shows them) and the worst round's
    nodes over the lower bound."""
    from fulcrum.lab.bench import DEFAULT, FULCRUM

    ours = result.phases.get(FULCRUM, [])
    ratio = None
    if ours and result.phases.get(DEFAULT):
        ratio = result.median(FULCRUM).throughput / result.median(DEFAULT).throughput
    over = max((p.nodes_used for p in ours), default=None)
    return Figures(
        ratio,
        None if over is None else over - result.lower_bound,
        max((p.pods - p.bound for p in ours), default=0),
    )


def compare_figures(result: Comparison) -> Figures:
    """The median of the rounds' throughput ratios (as the text shows it) and the worst round's
    nodes over the lower bound."""
    ours = [fulcrum for _, fulcrum in result.rounds]
    return Figures(
        statistics.median(result.ratios),
        max(r.nodes_used for r in ours) - result.lower_bound,
        max(r.pods - r.bound for r in ours),
    )


def check_floors(args: argparse.Namespace, figures: Figures, *, command: str) -> int:
    """0 if every floor given holds, else 1; each floor's verdict, the measured value and the
    floor, on standard error. A floor the run did not measure fails (``floors_usage`` refuses
    one that it could not, before the run)."""
    verdicts: list[tuple[bool, str]] = []
    if args.min_ratio is not None:
        ratio = figures.ratio
        held = ratio is not None and ratio >= args.min_ratio  # NaN (no throughput) fails
        measured = "not measured" if ratio is None else f"{ratio:.2f}"
        verdicts.append(
            (
                held,
                f"--min-ratio {args.min_ratio:g}: fulcrum-scheduler/default-scheduler "
                f"throughput {measured}",
            )
        )
    if args.max_nodes_over_bound is not None:
        over = figures.nodes_over_bound
        held = over is not None and over <= args.max_nodes_over_bound and not figures.unbound
        measured = "not measured" if over is None else f"{over} nodes over the lower bound"
        if figures.unbound:
            measured += f", {figures.unbound} pods left unbound"
        verdicts.append((held, f"--max-nodes-over-bound {args.max_nodes_over_bound}: {measured}"))
    for held, line in verdicts:
        print(f"fulcrum {command}: floor {'met' if held else 'FAILED'}: {line}", file=sys.stderr)
    return 0 if all(held for held, _ in verdicts) else 1


def floors_usage(args: argparse.Namespace) -> str | None:
    """Why a floor of ``fulcrum bench`` cannot be measured by the schedulers it runs, if so."""
    if args.min_ratio is not None and args.scheduler != "both":
        return "--min-ratio compares the two schedulers: it needs --scheduler both"
    if args.max_nodes_over_bound is not None and args.scheduler == "default":
        return "--max-nodes-over-bound measures fulcrum-scheduler: not with --scheduler default"
    return None


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) for a floor the run could not measure, before any cluster."""
    problem = floors_usage(args)
    if problem is not None:
        parser.error(problem)


def add_bench(sub: Subparsers) -> None:
    """The ``bench`` subcommand."""
    bench = sub.add_parser(
        "bench",
        help="the kwok scale test: nodes, configmaps and pods on a fresh cluster per scheduler, "
        "throughput, nodes used, latency, CPU, memory, apiserver QPS, then a local-rebuild roll",
    )
    bench.add_argument(
        "--nodes",
        type=at_least(1),
        default=1000,
        help="kwok nodes of 32 cpu/256Gi/110 pods (default %(default)s)",
    )
    bench.add_argument(
        "--pods", type=at_least(1), default=25000, help="pods placed (default %(default)s)"
    )
    bench.add_argument(
        "--configmaps",
        type=at_least(0),
        default=150000,
        help="configmaps created first (default %(default)s)",
    )
    bench.add_argument(
        "--shapes",
        default=DEFAULT_MIX,
        help="pod shapes as CPU/MEMORY:WEIGHT,... or openb:WORKLOAD for openb trace pods "
        "(CPU-only ones) (default %(default)s)",
    )
    bench.add_argument(
        "--scheduler",
        choices=("both", "default", "fulcrum"),
        default="both",
        help="which schedulers to run (default %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=at_least(1),
        default=1,
        help="place the pods this many times per scheduler (default %(default)s)",
    )
    bench.add_argument(
        "--rebuild",
        type=at_least(0),
        default=1000,
        help="pods per Deployment in the local-rebuild roll, 0 skips it (default %(default)s)",
    )
    add_nodes_to_score(bench)
    bench.add_argument(
        "--nominate",
        action="store_true",
        help="the extender nominates its pick for each pod as it arrives (nominate: true), so "
        "fulcrum-scheduler filters that node first and sends the extender one name",
    )
    bench.add_argument(
        "--fulcrum-first",
        action="store_true",
        help="with --scheduler both: fulcrum-scheduler's cluster first (to alternate the order "
        "between runs)",
    )
    bench.add_argument(
        "--go-default-gc",
        action="store_true",
        help="fulcrum-scheduler with Go's default garbage collector (GOGC 100, no memory "
        "limit), not the harness's GOGC=800 GOMEMLIMIT=1800MiB",
    )
    bench.add_argument(
        "--name", default="fulcrum-bench", help="cluster name prefix (default %(default)s)"
    )
    add_floors(bench, rounds="each one's round of median throughput; needs --scheduler both")
    output.add_output(bench, text="a table", progress=True)
    bench.set_defaults(
        func=_cmd_bench, validate=functools.partial(_validate, bench), error_status=2
    )


def add_bench_rebuild(sub: Subparsers) -> None:
    """The ``bench-rebuild`` subcommand: local rebuild against a plain rollout, real nodes."""
    bench = sub.add_parser(
        "bench-rebuild",
        help="local rebuild against a plain rollout of the same Deployment on real nodes, same "
        "run: change->Ready for an image change and an env change, and where the time goes",
    )
    bench.add_argument(
        "--real-nodes", type=at_least(1), default=2, help="real nodes (default %(default)s)"
    )
    bench.add_argument(
        "--replicas", type=at_least(1), default=4, help="pods per Deployment (default %(default)s)"
    )
    bench.add_argument(
        "--image-mb",
        type=at_least(1),
        default=200,
        help="size of each new image, MiB, served by the cluster's registry (default %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=at_least(1),
        default=3,
        help="rounds, order alternated (default %(default)s)",
    )
    bench.add_argument(
        "--prepull",
        choices=("hold", "ahead", "off"),
        default="hold",
        help="hold: an opted-in image change waits, paused, for its nodes to pre-pull (the "
        "default); ahead: no hold, the nodes pull while the rollout goes on; off: no pre-pull",
    )
    bench.add_argument(
        "--name", default="fulcrum-bench-real", help="cluster name (default %(default)s)"
    )
    output.add_output(bench, text="a table", progress=True)
    bench.set_defaults(func=_cmd_bench_rebuild)


def add_bench_node(sub: Subparsers) -> None:
    """The ``bench-node`` subcommand: what the node agent costs a container start."""
    bench = sub.add_parser(
        "bench-node",
        help="the node agent's cost per container start on a real node: agent on against off, "
        "alternated (CreateContainer, StartContainer, create->Running, its memory)",
    )
    bench.add_argument(
        "--pods", type=at_least(1), default=10, help="pods per round (default %(default)s)"
    )
    bench.add_argument(
        "--rounds",
        type=at_least(1),
        default=4,
        help="rounds of each, alternated (default %(default)s)",
    )
    bench.add_argument(
        "--name", default="fulcrum-bench-node", help="cluster name (default %(default)s)"
    )
    output.add_output(bench, text="a table", progress=True)
    bench.set_defaults(func=_cmd_bench_node)


STRATEGIES = ("Get", "Cache", "Watch")  # the kubelet's configMapAndSecretChangeDetectionStrategy


def strategies(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of ``STRATEGIES``."""
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    wrong = [s for s in chosen if s not in STRATEGIES]
    if wrong or not chosen:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give some of {','.join(STRATEGIES)}, comma-separated"
        )
    return chosen


def add_bench_configmaps(sub: Subparsers) -> None:
    """The ``bench-configmaps`` subcommand: the kubelets' configmap requests per strategy."""
    bench = sub.add_parser(
        "bench-configmaps",
        help="pods mounting configmaps on real nodes, per kubelet configmap strategy (Get, "
        "Cache, Watch) on a fresh cluster each: the kubelets' configmap GETs and watches "
        "against the apiserver's total, and how soon an update reaches the mounted file",
    )
    bench.add_argument(
        "--strategies",
        type=strategies,
        default=STRATEGIES,
        help="the kubelets' configMapAndSecretChangeDetectionStrategy, one run each, in this "
        "order (default Get,Cache,Watch)",
    )
    bench.add_argument(
        "--real-nodes", type=at_least(1), default=2, help="real nodes (default %(default)s)"
    )
    bench.add_argument("--pods", type=at_least(1), default=30, help="pods (default %(default)s)")
    bench.add_argument(
        "--configmaps",
        type=at_least(1),
        default=5,
        help="configmaps each pod mounts, its own (default %(default)s)",
    )
    bench.add_argument(
        "--window",
        type=positive,
        default=90,
        help="seconds of the steady state, pods running; a kubelet resyncs each pod every "
        "60-90 s (default %(default)s)",
    )
    bench.add_argument(
        "--baseline",
        type=positive,
        default=60,
        help="seconds of the baseline, no pods: every other client's requests (default "
        "%(default)s)",
    )
    bench.add_argument(
        "--updates",
        type=at_least(0),
        default=10,
        help="mounted configmaps changed at the end, each timed until its file shows it; 0: "
        "none (default %(default)s)",
    )
    bench.add_argument(
        "--name", default="fulcrum-bench-cm", help="cluster name prefix (default %(default)s)"
    )
    output.add_output(bench, text="a table", progress=True)
    bench.set_defaults(func=_cmd_bench_configmaps)


def _cmd_bench_configmaps(args: argparse.Namespace) -> int:
    from fulcrum.lab import configmap_bench

    config = configmap_bench.Config(
        name=args.name,
        strategies=args.strategies,
        real_nodes=args.real_nodes,
        pods=args.pods,
        configmaps=args.configmaps,
        window=args.window,
        baseline=args.baseline,
        updates=args.updates,
    )
    result = configmap_bench.run(config, say=output.progress(args.output, args.output_file))
    text = configmap_bench.format_table(result)
    output.emit(result.to_json(), args.output, text=text, file=args.output_file)
    return 0


def _cmd_bench_node(args: argparse.Namespace) -> int:
    from fulcrum.lab import node_bench

    config = node_bench.Config(name=args.name, pods=args.pods, rounds=args.rounds)
    result = node_bench.run(config, say=output.progress(args.output, args.output_file))
    text = node_bench.format_table(result)
    output.emit(result.to_json(), args.output, text=text, file=args.output_file)
    return 0


def _cmd_bench_rebuild(args: argparse.Namespace) -> int:
    from fulcrum.lab import real_bench

    config = real_bench.Config(
        name=args.name,
        real_nodes=args.real_nodes,
        replicas=args.replicas,
        image_mb=args.image_mb,
        rounds=args.rounds,
        prepull=args.prepull,
    )
    result = real_bench.run(config, say=output.progress(args.output, args.output_file))
    text = real_bench.format_table(result)
    output.emit(result.to_json(), args.output, text=text, file=args.output_file)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from fulcrum.lab import bench

    try:
        bench.pod_shapes(args.shapes, 1)  # before a cluster start, not after
    except ValueError as exc:
        print(f"fulcrum bench: error: --shapes: {exc}", file=sys.stderr)
        return 2
    config = bench.Config(
        nodes=args.nodes,
        pods=args.pods,
        configmaps=args.configmaps,
        shapes=args.shapes,
        scheduler=args.scheduler,
        rounds=args.rounds,
        rebuild=args.rebuild,
        name=args.name,
        nodes_to_score=args.nodes_to_score,
        nominate=args.nominate,
        fulcrum_first=args.fulcrum_first,
        go_default_gc=args.go_default_gc,
    )
    result = bench.run_bench(config, log=output.progress(args.output, args.output_file))
    text = bench.format_table(result)
    output.emit(result.to_json(), args.output, text=text, file=args.output_file)
    return check_floors(args, bench_figures(result), command="bench")
