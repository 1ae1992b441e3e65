"""The extender's CPU per pod (``extender_cpu.py``) from two source trees, in one process,
alternated: A, B, A, B... (a benchmark: it asserts nothing).

Each turn drops the project's modules from ``sys.modules``, puts the turn's tree first on
``sys.path`` and replays ``benchmarks/extender_cpu.py`` of that tree, so both trees share one
interpreter, one numpy and the machine's state of the moment. Use it to see what a change costs
on the hot path (a filter, a bind, a watch event): make a worktree of the commit before it.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python benchmarks/ab_trees.py /tmp/before . [--rounds 5] [--nodes 1000] [--pods 2000]
"""

import argparse
import asyncio
import contextlib
import importlib.util
import io
import re
import statistics
import sys
from pathlib import Path

PACKAGES = ("fulcrum", "scheduler", "policies", "kube", "extender", "rebuild", "admission")
_VERB = re.compile(r"^\s+(filter|bind|watch|total)\s+([0-9.]+)$", re.M)


def replay(tree: Path, nodes: int, pods: int, seed: int) -> dict[str, float]:
    """One replay from ``tree``: CPU ms per pod by verb, parsed from what it prints."""
    for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        spec = importlib.util.spec_from_file_location(
            "extender_cpu_ab", tree / "benchmarks" / "extender_cpu.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            asyncio.run(module.replay(nodes, pods, seed))
    finally:
        sys.path.remove(str(tree))
    return {verb: float(ms) for verb, ms in _VERB.findall(out.getvalue())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the tree before (a worktree)")
    parser.add_argument("b", type=Path, help="the tree after")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for i in range(args.rounds):
        for side in ("a", "b"):
            tree = getattr(args, side).resolve()
            result = replay(tree, args.nodes, args.pods, args.seed)
            runs[side].append(result)
            shown = ", ".join(f"{verb} {ms:.3f}" for verb, ms in result.items())
            print(f"round {i + 1}/{args.rounds} {side} ({tree}): {shown}", flush=True)
    print(f"\nCPU ms per pod, medians of {args.rounds} ({args.nodes} nodes, {args.pods} pods):")
    print(f"  {'verb':8} {'a':>7} {'b':>7} {'b/a':>6}")
    for verb in runs["a"][0]:
        a = statistics.median(r[verb] for r in runs["a"])
        b = statistics.median(r[verb] for r in runs["b"])
        print(f"  {verb:8} {a:7.3f} {b:7.3f} {b / a:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
