"""How the ``fulcrum`` command prints a result: ``-o text|json|yaml`` and ``--output-file FILE``.

Every command that prints a result takes the same two flags (``add_output``) and prints through
``emit``: the text a person reads, or the result's JSON document (the same document in YAML).
Progress goes to standard output unless standard output carries JSON or YAML (``progress``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import orjson
import yaml

FORMATS = ("text", "json", "yaml")


def output_file(text: str) -> Path:
    """An argparse type: a file whose folder exists (checked before a long run, not after)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory {path.parent}")
    return path


def add_output(
    parser: argparse.ArgumentParser, *, text: str = "a table", progress: bool = False
) -> None:
    """``-o/--output`` and ``--output-file``; ``text`` says what the text format shows,
    ``progress`` whether the command prints progress as well."""
    moved = "; progress goes to standard error when json or yaml does to standard output"
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="text",
        metavar="FORMAT",
        help=f"text ({text}; the default), json or yaml{moved if progress else ''}",
    )
    parser.add_argument(
        "--output-file",
        type=output_file,
        default=None,
        metavar="FILE",
        help="write the result (in the -o format) to FILE instead of standard output",
    )


def render(document: Any, fmt: str, *, text: str) -> str:
    """``text`` for ``-o text``; else ``document`` (anything orjson serialises: dicts, lists,
    dataclasses, numpy values) as indented JSON or as YAML, ending with a newline."""
    if fmt == "text":
        return text if text.endswith("\n") or not text else text + "\n"
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    encoded = orjson.dumps(document, option=options)
    if fmt == "json":
        return encoded.decode() + "\n"
    if fmt == "yaml":
        plain = orjson.loads(encoded)  # dataclasses and numpy values as YAML's plain types
        dumped: str = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=100)
        return dumped
    raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")


def emit(
    document: Any,
    fmt: str,
    *,
    text: str,
    file: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> None:
    """Print the result in ``fmt`` on ``out`` (standard output), or write it to ``file`` and
    say so on ``err`` (standard error)."""
    rendered = render(document, fmt, text=text)
    if file is None:
        (out or sys.stdout).write(rendered)
        return
    file.write_text(rendered)
    print(f"wrote {file}", file=err or sys.stderr)


def progress(fmt: str, file: Path | None) -> Callable[..., None]:
    """``print`` for progress lines: on standard output, unless the result goes there as JSON
    or YAML; flushed, so that a log follows a long run."""
    stream = sys.stderr if fmt != "text" and file is None else sys.stdout
    return functools.partial(print, file=stream, flush=True)
