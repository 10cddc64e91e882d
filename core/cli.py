"""Command line: `python -m core [run] [--config PATH]`, `check [PATH]`,
`config-reference`, `plugins`, `new-plugin`, and the client commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "config.toml"


def _check(args: argparse.Namespace) -> int:
    if args.explain:
        return _config_reference(args)
    from core.app import load_config
    from core.config import ConfigError
    from core.plugins import PluginManager

    try:
        config = load_config(args.path, PluginManager())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(config.components) or "none"
    print(f"{config.path}: OK ({len(config.components)} components: {names})")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from core.schema import reference

    sys.stdout.write(reference())
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from core.plugins import PluginManager

    rows = [("NAME", "FROM", "STATUS"), *PluginManager().describe()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for name, source, status in rows:
        print(f"{name.ljust(widths[0])}  {source.ljust(widths[1])}  {status}")
    return 0


def _new_plugin(args: argparse.Namespace) -> int:
    from core.scaffold import ScaffoldError, create, names

    try:
        root = create(args.name, args.dir)
    except ScaffoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = names(args.name)
    print(f"created {root}: distribution {n['dist']}, module {n['module']}, "
          f"entry point {n['name']!r}\n"
          f"next: pip install '{root}[test]' && pytest {root / 'tests'}\n"
          f'then in config.toml: [components.{n["name"]}] plugin = "{n["name"]}" port = 7800')
    return 0


def _run(args: argparse.Namespace) -> int:
    from core.app import run

    return run(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Control Center: a process supervisor with a live web dashboard.")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="config file to run (default: ./config.toml)")
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    run_p = sub.add_parser("run", help="run the supervisor (the default)")
    run_p.add_argument("--config", default=DEFAULT_CONFIG, help="config file to run")
    run_p.set_defaults(func=_run)
    check_p = sub.add_parser("check", help="validate a config file and exit")
    check_p.add_argument("path", nargs="?", default=DEFAULT_CONFIG)
    check_p.add_argument("--explain", action="store_true",
                         help="print every key with its type, default and meaning instead "
                              "(the same as config-reference)")
    check_p.set_defaults(func=_check)
    ref_p = sub.add_parser("config-reference",
                           help="print every config.toml key with its type, default and "
                                "meaning (the text of docs/config.md)")
    ref_p.set_defaults(func=_config_reference)
    plugins_p = sub.add_parser("plugins", help="list the installed plugins: the name to use "
                                               "in plugin = \"...\", where each comes from")
    plugins_p.set_defaults(func=_plugins)
    new_p = sub.add_parser("new-plugin", help="create a plugin package to start from: "
                                              "pyproject with the entry point, module, tests")
    new_p.add_argument("name", help="the plugin's name, as config.toml will say plugin = NAME")
    new_p.add_argument("--dir", default=".", help="where to create it (default: here)")
    new_p.set_defaults(func=_new_plugin)
    try:
        from core.client_cli import add_commands
    except ImportError:  # the client commands are optional at build time
        pass
    else:
        add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
