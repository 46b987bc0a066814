"""Reference pages generated at build time, so that they cannot drift from the code.

A MkDocs hook (``hooks:`` in mkdocs.yml): a page that holds the marker ``<!-- vitrain:cli -->`` gets the
command-line reference built from ``vitrain.cli.build_parser()``, and ``<!-- vitrain:config -->`` the list of
every ``--config`` key with its default, from the ``TrainConfig`` dataclass and its options' declarations.
The two builders are plain functions, so the tests call them too.
"""

from __future__ import annotations

import argparse
import typing

CLI_MARKER = "<!-- vitrain:cli -->"
CONFIG_MARKER = "<!-- vitrain:config -->"

# the commands that build a TrainConfig from their options (their parser defaults are argparse.SUPPRESS)
CONFIG_COMMANDS = ("train", "pretrain")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _literal(value: object) -> str:
    """A default as the user would write it in a flag or a YAML file."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (list, tuple)):
        return "`" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _config_defaults() -> dict[str, object]:
    from vitrain.config import TrainConfig

    return TrainConfig().to_dict()


def _declared_help() -> dict[str, str]:
    """The help of each TrainConfig option by its flag, as declared (the parser's adds the default)."""
    from vitrain.config import TrainConfig, options

    return {o.flag: o.help for o in options(TrainConfig) if o.flag}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order they were added."""
    for action in parser._actions:  # argparse keeps no public list of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _wide(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=80)


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"`{name}`" + (" ..." if action.nargs in ("+", "*") else "")
    flag = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return flag
    if action.choices:
        return flag + " " + "\\|".join(f"`{c}`" for c in action.choices)
    metavar = action.metavar or action.dest.upper()
    return f"{flag} `{metavar}`"


def _default(action: argparse.Action, command: str, defaults: dict[str, object]) -> str:
    if action.required or not action.option_strings:
        return "required"
    if action.default is argparse.SUPPRESS:
        if command in CONFIG_COMMANDS and action.dest in defaults:
            value = defaults[action.dest]
            if action.nargs == 0 and isinstance(value, bool):  # --no-progress stores False into progress=True
                return "off"
            return _literal(value)
        return "-"
    if action.nargs == 0 and isinstance(action.default, bool):
        return "off"
    return _literal(action.default)


def _options_table(actions: list[argparse.Action], command: str, defaults: dict[str, object]) -> list[str]:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    declared = _declared_help() if command in CONFIG_COMMANDS else {}  # the default has its own column
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        flag = action.option_strings[0] if action.option_strings else ""
        text = declared.get(flag, action.help or "")
        rows.append(f"| {_flag(action)} | {_default(action, command, defaults)} | {_cell(text)} |")
    return rows if len(rows) > 2 else []


def cli_reference_markdown() -> str:
    """Every ``vitrain`` subcommand with its usage line and every option, grouped as in ``--help``."""
    from vitrain.cli import build_parser

    parser = build_parser()
    defaults = _config_defaults()
    lines: list[str] = []
    for name, sub in subcommands(parser).items():
        sub.prog = f"vitrain {name}"
        sub.formatter_class = _wide  # the same usage lines whatever the terminal's width
        lines += [f"## `vitrain {name}`", ""]
        if sub.description:
            lines += [_cell(sub.description), ""]
        # train and pretrain take some ninety options: their tables below say more than a usage line
        usage = f"vitrain {name} [OPTION ...]" if name in CONFIG_COMMANDS else sub.format_usage().strip()
        lines += ["```", usage.removeprefix("usage: "), "```", ""]
        for group in sub._action_groups:  # the same grouping as `vitrain NAME --help`
            table = _options_table(group._group_actions, name, defaults)
            if not table:
                continue
            title = {"positional arguments": "arguments", "options": "options"}.get(group.title, group.title)
            lines += [f"**{title}**", "", *table, ""]
    return "\n".join(lines)


def _type_name(hint: object) -> str:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return _type_name(args[0])
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(hint, "__name__", str(hint))


def config_reference_markdown() -> str:
    """Every key a ``--config`` YAML file (and a run's config.yaml) may hold, with its type and default."""
    from vitrain.config import TrainConfig, options

    hints = typing.get_type_hints(TrainConfig)
    defaults = _config_defaults()
    rows = ["| key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for opt in options(TrainConfig):
        flag_cell = f"`{opt.flag}`" if opt.flag else "(set from the weights or the data)"
        rows.append(
            f"| `{opt.name}` | {flag_cell} | {_type_name(hints[opt.name])} | {_literal(defaults.get(opt.name))} "
            f"| {_cell(opt.help)} |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs) -> str:  # noqa: ARG001 - MkDocs passes page, config, files
    """MkDocs hook: fill the reference markers of a page."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference_markdown())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference_markdown())
    return markdown
