"""``dispatcher completion bash|zsh``: a shell completion script built from the parser.

Commands (``handoffs list`` included), their options and the values of options with
choices (``--status``, ``--format`` ...) complete; options naming a file complete
file names. zsh uses the same function through ``bashcompinit``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from dispatcher.cli.examples import commands
from dispatcher.cli.parser import build_parser

FILE_METAVARS = frozenset({"PATH", "FILE"})
"""Options whose value is a file name."""

_BASH = """\
# bash completion for dispatcher (dispatcher completion bash)
_dispatcher() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="" words="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "${{path:+$path }}$word" in
{paths}
        esac
    done
    case "$path|$prev" in
{values}
    esac
    case "$path" in
{words}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _dispatcher dispatcher
"""

_ZSH = """\
#compdef dispatcher
# zsh completion for dispatcher (dispatcher completion zsh): the bash function through bashcompinit
autoload -U +X bashcompinit && bashcompinit
"""


def script(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    """The completion script of ``shell`` (``bash`` or ``zsh``) for ``parser`` (default: dispatcher's)."""
    parser = parser or build_parser()
    tree = [("", parser), *((path, sub) for path, sub, _ in commands(parser))]
    paths = "\n".join(f"            {shlex.quote(path)}) path={shlex.quote(path)} ;;" for path, _ in tree[1:])
    values = "\n".join(line for path, sub in tree for line in _value_cases(path, sub))
    words = "\n".join(f"        {shlex.quote(path)}) words={shlex.quote(' '.join(_words(sub)))} ;;"
                      for path, sub in tree)
    bash = _BASH.format(paths=paths, values=values, words=words)
    return bash if shell == "bash" else _ZSH + bash


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """What may follow a command: its subcommands or positional choices, then its options."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices)
        elif not action.option_strings and action.choices:  # db upgrade|current, completion bash|zsh
            found.extend(str(choice) for choice in action.choices)
    for action in parser._actions:
        found.extend(o for o in action.option_strings if o.startswith("--"))
    return found


def _value_cases(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """``case`` lines completing the value of each option of ``parser`` that takes one."""
    lines = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        pattern = " | ".join(shlex.quote(f"{path}|{option}") for option in action.option_strings)
        if action.choices:
            choices = shlex.quote(" ".join(str(c) for c in action.choices))
            lines.append(f"        {pattern}) COMPREPLY=($(compgen -W {choices} -- \"$cur\")); return ;;")
        elif action.metavar in FILE_METAVARS:
            lines.append(f"        {pattern}) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;")
        else:
            lines.append(f"        {pattern}) return ;;")
    return lines


def completion_command(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0
