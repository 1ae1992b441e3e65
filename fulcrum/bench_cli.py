"""``fulcrum bench``'s flags and command; the work is in ``fulcrum.lab.bench`` (imported only when
the command runs, so other commands do not pay for its imports)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TypeAlias

from fulcrum.lab import DEFAULT_MIX

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
        "--name", default="fulcrum-bench", help="cluster name prefix (default %(default)s)"
    )
    bench.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text (default), or json on stdout with progress on stderr",
    )
    bench.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import orjson

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
    )
    log = print if args.output == "text" else functools.partial(print, file=sys.stderr)
    result = bench.run_bench(config, log=functools.partial(log, flush=True))
    if args.output == "json":
        print(
            orjson.dumps(
                result.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
            ).decode()
        )
    else:
        print(bench.format_table(result))
    return 0
