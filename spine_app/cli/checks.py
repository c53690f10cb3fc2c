"""The command line checked before python-fire runs anything.

python-fire (the project's CLI library) reports a misspelled flag only after the command has run
("Could not consume arg" at the end of a batch), takes single letters as abbreviations of any
parameter (``-n`` = ``--nifti``) and has no ``--version``. :func:`check_command_line` closes those
gaps: it resolves the command from ``argv``, checks every flag against the command's signature
(one line with the closest valid name, exit 2), refuses single-letter flags other than the global
ones, refuses surplus positional arguments, validates ``--device`` and handles the global flags
``--version``, ``-q/--quiet`` and ``-v/--verbose``.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

HELP_FLAGS = frozenset({"--help", "-h", "--helpfull"})
_NUMBER = re.compile(r"-\d+(\.\d*)?([eE][-+]?\d+)?")


class CommandLineError(ValueError):
    """A bad command line: ``str(err)`` is the one line to print (exit status 2)."""

    exit_status = 2


class Group:
    """A group of commands with a description (python-fire lists it under GROUPS with its summary)."""

    def __init__(self, doc: str, commands: Mapping[str, Any]) -> None:
        self.__doc__ = doc
        self.commands = dict(commands)  # fire lists the names of __dir__ only (below)
        for name, command in commands.items():
            setattr(self, name, command)

    def __dir__(self) -> list[str]:  # fire lists the commands only
        return list(self.commands)


@dataclass
class CommandLine:
    """What :func:`check_command_line` found: argv for fire and the logging level."""

    argv: list[str]
    log_level: int = logging.WARNING
    version: bool = False


def _is_flag(token: str) -> bool:
    """A flag as python-fire sees one (``--x``, ``-x``), a negative number being a value."""
    return token.startswith("-") and len(token) > 1 and not _NUMBER.fullmatch(token)


def _closest(name: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean --{match[0]}?" if match else f"; valid flags: {', '.join('--' + c for c in choices)}"


def _resolve(argv: list[str], commands: Mapping[str, Any]) -> tuple[list[str], Any, int]:
    """(command path, the function or group it names, index of the first argument after it)."""
    component: Any = commands
    path: list[str] = []
    i = 0
    while i < len(argv) and not _is_flag(argv[i]):
        members = component if isinstance(component, Mapping) else getattr(component, "commands", None)
        if members is None:
            break
        if argv[i] not in members:
            where = " ".join(["spine-app", *path])
            match = difflib.get_close_matches(argv[i], list(members), n=1, cutoff=0.5)
            hint = f"; did you mean {match[0]!r}?" if match else f"; choose from {', '.join(members)}"
            raise CommandLineError(f"{where}: unknown command {argv[i]!r}{hint}")
        component = members[argv[i]]
        path.append(argv[i])
        i += 1
    return path, component, i


def _flag_names(fn: Callable[..., Any], extra: list[str] | None = None) -> tuple[list[str] | None, set[str], bool, int]:
    """(keyword names + ``extra``, boolean names, takes *args, number of positional slots) of ``fn``;
    names None when ``fn`` takes ``**kwargs`` and no ``extra`` list says which (any flag goes)."""
    sig = inspect.signature(fn)
    names, booleans, var_args, slots, open_kwargs = [], set(), False, 0, False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            var_args = True
        elif p.kind is p.VAR_KEYWORD:
            open_kwargs = extra is None
            continue
        else:
            names.append(p.name)
            if p.kind is p.POSITIONAL_OR_KEYWORD:
                slots += 1
            if p.default is False or p.default is True or p.annotation in (bool, "bool"):
                booleans.add(p.name)
    return (None if open_kwargs else names + list(extra or [])), booleans, var_args, slots


def check_arguments(
    fn: Callable[..., Any], args: list[str], where: str, extra: list[str] | None = None
) -> dict[str, str | None]:
    """Check ``args`` (what follows the command) against ``fn``'s signature (plus the ``extra`` flag
    names a ``**kwargs`` command takes); returns {flag: value}.

    Raises:
        CommandLineError: an unknown flag, a single-letter flag, or more positional arguments than
            the command takes.
    """
    names, booleans, var_args, slots = _flag_names(fn, extra)
    given: dict[str, str | None] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":  # what follows is for fire itself (e.g. -- --help)
            break
        if token in HELP_FLAGS:
            i += 1
            continue
        if not _is_flag(token):
            positional.append(token)
            i += 1
            continue
        if not token.startswith("--"):
            raise CommandLineError(
                f"{where}: short flag {token.split('=')[0]} is not supported; use the full name"
                f"{_closest(token.lstrip('-').split('=')[0], names or [])}"
            )
        key, _, value = token[2:].partition("=")
        key = key.replace("-", "_")
        bare = "=" not in token and (i + 1 == len(args) or _is_flag(args[i + 1]))
        if key.startswith("no") and key[2:] in booleans and bare:
            key = key[2:]
        elif names is not None and key not in names:
            raise CommandLineError(f"{where}: unknown flag --{key}{_closest(key, names)}")
        if "=" not in token and not bare:
            value = args[i + 1]
            i += 1
        given[key] = value if ("=" in token or not bare) else None
        i += 1
    positional_names = list(inspect.signature(fn).parameters)[:slots]
    free = slots - sum(1 for name in given if name in positional_names)
    if not var_args and len(positional) > max(free, 0):
        extra = positional[max(free, 0)]
        raise CommandLineError(f"{where}: unexpected argument {extra!r} (this command takes {slots} without a flag)")
    return given


def check_command_line(
    argv: list[str],
    commands: Mapping[str, Any],
    check_device: Callable[[str], str] | None = None,
    extra_flags: Mapping[Callable, Callable[[], list[str]]] | None = None,
) -> CommandLine:
    """Check ``argv`` (without the program name) before fire runs.

    Global flags, anywhere before ``--``: ``--version``; ``-q``/``--quiet`` (errors only) and
    ``-v``/``--verbose`` (info logging), removed from the returned argv. ``check_device`` validates
    a ``--device`` value (it raises ValueError with the one line to print); ``extra_flags`` maps a
    ``**kwargs`` command to the function listing the other flag names it takes.

    Raises:
        CommandLineError: see :func:`check_arguments`; an unknown command.
    """
    out = CommandLine(argv=[])
    end = argv.index("--") if "--" in argv else len(argv)
    for token in argv[:end]:
        if token == "--version":
            out.version = True
        elif token in ("-q", "--quiet"):
            out.log_level = logging.ERROR
        elif token in ("-v", "--verbose"):
            out.log_level = logging.INFO
        else:
            out.argv.append(token)
    out.argv += argv[end:]
    if out.version:
        return out
    path, component, i = _resolve(out.argv, commands)
    if not callable(component) or isinstance(component, (Group, Mapping)):
        rest = [t for t in out.argv[i:] if t not in HELP_FLAGS and t != "--"]
        if rest and _is_flag(rest[0]) and out.argv[i:][:1] != ["--"]:
            raise CommandLineError(f"{' '.join(['spine-app', *path])}: give a command before {rest[0]}")
        return out
    where = " ".join(["spine-app", *path])
    lister = (extra_flags or {}).get(component)
    extra = lister() if lister is not None else None
    given = check_arguments(component, out.argv[i:], where, extra)
    if check_device is not None and given.get("device") is not None:
        try:
            check_device(str(given["device"]))
        except ValueError as err:
            raise CommandLineError(str(err)) from None
    return out
