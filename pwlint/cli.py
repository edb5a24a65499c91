"""The ``pwlint`` command.

    pwlint [check] PATH...     lint model files and folders
    pwlint diff OLD NEW        compare two versions of a model (or --git REV)
    pwlint rule CODE           show a rule's documentation
    pwlint rules               list the rules
    pwlint plugins             list the loaded plugins and what they provide

Exit codes: 0 no finding at or above ``fail-on``; 1 findings; 2 usage,
configuration or load error (one line on stderr, no traceback).
Heavy modules (onnx, the plugins) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys

from pwlint import __version__

COMMANDS = ("check", "diff", "rule", "rules", "plugins")
SEVERITIES = ("info", "warning", "error")
#: pwlint diff's report formats (pwlint.diff_report)
DIFF_FORMATS = ("text", "markdown", "json")


#: distributions whose versions ``pwlint --version`` lists, for bug reports: (name shown,
#: the distributions that provide it, first found wins)
FRAMEWORK_DISTRIBUTIONS = (
    ("onnx", ("onnx",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon")),
    ("keras", ("keras",)),
    ("torch", ("torch",)),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        # each command's parser points at its own help, which lists its options
        sys.stderr.write(f"pwlint: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


class _TopLevelParser(_Parser):
    """``pwlint --help``: the commands, then check's options, since ``pwlint FILE...`` is
    ``pwlint check FILE...`` (as in ruff) and most readers want those."""

    check_parser: argparse.ArgumentParser
    commands_action: argparse.Action

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        self._section(formatter, "commands", self.commands_action._get_subactions())
        check = self.check_parser
        self._section(
            formatter, "options of check (the default command; the same as 'pwlint check --help')",
            [action for action in check._actions if action.option_strings and not isinstance(action, argparse._HelpAction)],
        )
        self._section(formatter, "other options", [action for action in self._actions if action.option_strings])
        formatter.add_text(
            "Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage, configuration or load error. "
            "Each command's options: pwlint COMMAND --help."
        )
        return formatter.format_help()

    @staticmethod
    def _section(formatter, title: str, actions) -> None:
        formatter.start_section(title)
        formatter.add_arguments(actions)
        formatter.end_section()


class _VersionAction(argparse.Action):
    """``--version``: pwlint's, then Python's and the frameworks' found, one per line.
    Versions are read from the installed distributions' metadata: nothing is imported."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_report())
        parser.exit()


def version_report() -> str:
    """``pwlint 0.1.0`` then ``python 3.11.9 (CPython, Linux x86_64)`` and one line per
    framework: its version, or ``not installed``."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    lines = [
        f"pwlint {__version__}",
        f"python {platform.python_version()} ({platform.python_implementation()}, {platform.system()} {platform.machine()})",
    ]
    for shown, distributions in FRAMEWORK_DISTRIBUTIONS:
        found = "not installed"
        for distribution in distributions:
            try:
                found = version(distribution)
            except PackageNotFoundError:
                continue
            if distribution != shown:
                found += f" ({distribution})"
            break
        lines.append(f"{shown} {found}")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = _TopLevelParser(
        prog="pwlint",
        usage=(
            "pwlint [check] [OPTIONS] PATH...\n"
            "       pwlint diff OLD NEW | pwlint diff --git REV [PATH...]\n"
            "       pwlint rule CODE | pwlint rules | pwlint plugins | pwlint --version"
        ),
        description="Lint neural-network models: Flatten+Dense heads, oversized dense layers, missing normalisation.",
        epilog=None,
    )
    parser.add_argument("--version", action=_VersionAction, help="show pwlint's version and those of Python, onnx, onnxruntime, keras and torch found, and exit")
    # prog: the commands' usage and errors say `pwlint diff`, not the top-level usage
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, title="commands", metavar="", prog="pwlint")

    check = sub.add_parser("check", help="lint model files and folders (the default command)")
    check.add_argument("paths", nargs="+", metavar="PATH", help="model files or folders, or pkg.module:name (a model your code defines: runs your code)")
    check.add_argument("--select", action="append", metavar="CODES", help="rule codes, prefixes or names to enable (comma-separated); replaces the configured select")
    check.add_argument("--ignore", action="append", metavar="CODES", help="rule codes, prefixes or names to disable (comma-separated); added to the configured ignore")
    check.add_argument("--format", default="text", metavar="FORMAT", help="output format: text (default), json, concise, github, junit or sarif")
    check.add_argument("--config", metavar="FILE", help="use this file's [tool.pwlint] table (a pyproject.toml) or top-level keys (a pwlint.toml) instead of searching for one")
    check.add_argument("--fail-on", choices=SEVERITIES, help="lowest severity that makes the exit code 1 (default: warning)")
    check.add_argument("--exit-zero", action="store_true", help="exit 0 even when there are findings (errors still exit 2)")
    check.add_argument("--output-file", metavar="FILE", help="write the report to FILE instead of standard output (also -o FILE when not fixing)")
    check.add_argument("--jobs", type=_jobs, metavar="N", help="lint files in N processes (default: the number of CPUs; 1: in this process); --fix and --diff stay serial")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress line on the terminal")
    check.add_argument("--statistics", action="store_true", help="after the report, count the findings per rule")
    check.add_argument("--write-baseline", metavar="FILE", help="record the current findings in FILE and exit 0; later runs with --baseline FILE report only new ones")
    check.add_argument("--baseline", metavar="FILE", help="hide the findings recorded in FILE and list its stale entries")
    check.add_argument("--fix", action="store_true", help="apply safe fixes, verify them and write the model (in place unless -o)")
    check.add_argument("--unsafe-fixes", action="store_true", help="also apply unsafe fixes, which change what the model computes")
    check.add_argument("--diff", action="store_true", help="show what --fix would change and write nothing")
    check.add_argument("-o", "--output", metavar="PATH", help="with --fix, write the fixed model here and leave the source untouched; without it, write the report here (as --output-file)")
    check.add_argument("--no-verify", action="store_true", help="with --fix, skip the numeric check (the format's checker still runs)")
    check.add_argument("--input-shape", action="append", metavar="SHAPE", help="for a torch model named as pkg.module:name: an example input's shape, e.g. 1,3,224,224 (repeat per input)")
    check.add_argument("--input-dtype", action="append", metavar="DTYPE", help="the dtype of each --input-shape (default float32)")
    check.add_argument("--allow-missing-weights", action="store_true", help="lint a model whose weights are not there (absent external data, a .pt2 without its weight members) from its shapes alone instead of refusing it")

    rule = sub.add_parser("rule", help="show a rule's documentation")
    rule.add_argument("code", metavar="CODE", help="rule code or name, e.g. PW001 or flatten-dense-head")

    rules = sub.add_parser("rules", help="list the rules")
    rules.add_argument("--format", default="text", choices=("text", "json"))

    sub.add_parser("plugins", help="list the loaded plugins and what they provide")

    _add_diff_arguments(sub.add_parser("diff", help="compare two versions of a model: findings, parameters, MACs, file size"))
    parser.check_parser = check
    parser.commands_action = sub
    parser.commands = sub.choices
    return parser


def _jobs(value: str) -> int:
    """``--jobs N``: a whole number of processes, at least 1."""
    try:
        jobs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes (1 or more), got {value!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes (1 or more), got {value!r}")
    return jobs


def _default_jobs() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _add_diff_arguments(parser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="OLD NEW: two model files; with --git, paths to limit the search to")
    parser.add_argument("--git", metavar="REV", help="compare the models changed between REV and the working tree (untracked ones included)")
    parser.add_argument("--format", default="text", choices=DIFF_FORMATS, help="text (default), markdown (a pull-request comment) or json")
    parser.add_argument("-o", "--output-file", metavar="FILE", help="write the report to FILE instead of standard output")
    parser.add_argument("--select", action="append", metavar="CODES", help="rule codes, prefixes or names to enable, as for check")
    parser.add_argument("--ignore", action="append", metavar="CODES", help="rule codes, prefixes or names to disable, as for check")
    parser.add_argument("--config", metavar="FILE", help="use this file's [tool.pwlint] table (a pyproject.toml) or top-level keys (a pwlint.toml), as for check")
    parser.add_argument("--fail-on", choices=SEVERITIES, help="lowest severity of a new finding that makes the exit code 1 (default: warning)")
    parser.add_argument("--exit-zero", action="store_true", help="exit 0 even when there are new findings (errors still exit 2)")
    parser.add_argument("--allow-missing-weights", action="store_true", help="compare models whose weights are not there from their shapes alone, as for check")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "check")
    elif argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "check")
    parser = _parser()
    if argv and argv[0] == "check":
        # intermixed, so that options may come between paths: pwlint a.onnx --select PW001 b.onnx
        args = parser.check_parser.parse_intermixed_args(argv[1:])
        args.command = "check"
    elif argv and argv[0] in COMMANDS:
        # the command's own parser, so that its errors point at the help that lists its options
        args = parser.commands[argv[0]].parse_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    from pwlint.errors import PwlintError

    try:
        return _run(args)
    except PwlintError as exc:
        sys.stderr.write(f"pwlint: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pwlint ... | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get("PWLINT_DEBUG"):
            raise
        sys.stderr.write(f"pwlint: internal error: {type(exc).__name__}: {exc} (set PWLINT_DEBUG=1 for a traceback)\n")
        return 2


def _run(args) -> int:
    from pwlint.plugins import get_registry

    registry = get_registry()
    if args.command == "rule":
        return _show_rule(registry, args.code)
    if args.command == "rules":
        return _list_rules(registry, args.format)
    if args.command == "plugins":
        return _list_plugins(registry)
    if args.command == "diff":
        from pwlint import model_diff

        return model_diff.run(registry, args)
    return _check(registry, args)


def _check(registry, args) -> int:
    from pwlint.errors import PwlintError

    reporter = registry.reporters.get(args.format)
    if reporter is None:
        raise PwlintError(f"unknown format '{args.format}' (known: {', '.join(registry.reporters)})")
    fix_mode = _fix_mode(args)
    linter = _linter(registry, args, fix_mode)
    if args.output and len(linter.files(args.paths)) != 1:
        raise PwlintError("-o/--output takes exactly one model to fix")
    if fix_mode is not None:
        from pwlint.fix import preflight
        from pwlint.targets import is_code_target

        # before any model is read: a bad -o or a missing extra is one line, not a wasted lint
        preflight.check(linter, [path for path in args.paths if not is_code_target(path)], fix_mode)
    result = _lint(linter, args)
    for file in result.errors:
        sys.stderr.write(f"pwlint: error: {file.error}\n")
    if args.write_baseline:
        return _write_baseline(result, args.write_baseline)
    if args.baseline:
        from pwlint import baseline

        outcome = baseline.apply_baseline(result, args.baseline)
        for line in outcome.messages():
            sys.stderr.write(f"pwlint: {line}\n")
    _report(reporter, result, args)
    if fix_mode is not None:
        from pwlint.fix import preflight

        for file in result.files:  # a model to be written that was not: one line each, why
            line = preflight.outcome_line(file.fix, fix_mode) if file.fix is not None else None
            if line:
                sys.stderr.write(f"pwlint: {line}\n")
    return result.exit_code(exit_zero=args.exit_zero)


def _fix_mode(args):
    """The :class:`~pwlint.fix.rounds.FixMode` that --fix/--diff ask for (None when only
    linting), once the flags are known to make sense together; ``-o`` without --fix
    names the report file, as ruff's does."""
    from pwlint.errors import PwlintError

    if args.output and args.diff:
        # -o names the fixed model, and --diff writes none: taking -o as the report file
        # instead would put a report where the user meant a model to go
        raise PwlintError("-o names the fixed model and --diff writes none: drop -o (--output-file FILE writes the report)")
    if args.unsafe_fixes and not (args.fix or args.diff):
        sys.stderr.write("pwlint: warning: --unsafe-fixes has no effect without --fix or --diff\n")
    if args.output and not (args.fix or args.diff):
        # ruff's -o: without --fix there is no model to write, so -o names the report
        if args.output_file:
            raise PwlintError("give the report file once: -o or --output-file")
        args.output_file, args.output = args.output, None
    if args.write_baseline and (args.fix or args.diff or args.baseline):
        raise PwlintError("--write-baseline records findings; it does not combine with --fix, --diff or --baseline")
    if args.fix or args.diff:
        from pwlint.fix.rounds import FixMode

        return FixMode(unsafe=args.unsafe_fixes, verify=not args.no_verify, diff=args.diff, output=args.output)
    if args.no_verify:
        raise PwlintError("--no-verify only makes sense with --fix or --diff")
    return None


def _linter(registry, args, fix_mode):
    from pwlint.config import ConfigResolver, Overrides
    from pwlint.engine import Linter, LinterRecipe

    overrides = Overrides.from_flags(args.select, args.ignore, args.fail_on)
    recipe = LinterRecipe(overrides, args.config, args.allow_missing_weights)  # for --jobs workers
    return Linter(registry, ConfigResolver(overrides, args.config), fix_mode,
                  allow_missing_weights=args.allow_missing_weights, recipe=recipe)


def _lint(linter, args):
    """Lint the paths, with a progress line on a terminal. Folders that hold no model
    file are a warning (exit 0, as in ruff), or an error explaining the model-like files
    they hold that pwlint does not read (:mod:`pwlint.nothing_found`)."""
    from pwlint.errors import PwlintError

    from pwlint.targets import is_code_target

    progress = None if args.quiet else _progress_on_terminal()
    jobs = args.jobs if args.jobs is not None else _default_jobs()
    if any(is_code_target(path) for path in args.paths):
        result = _lint_with_targets(linter, args, progress)
    else:
        if args.input_shape or args.input_dtype:
            raise PwlintError("--input-shape and --input-dtype go with a code target (pkg.module:name)")
        result = linter.lint_paths(args.paths, progress=progress, jobs=jobs)
    if progress is not None and progress.shown:
        sys.stderr.write("\r\x1b[K")  # the report starts on a clean line
    if not result.files:  # only folders were given (a named file is always a result)
        from pwlint.engine import SKIPPED_DIRS
        from pwlint.nothing_found import explain

        searched = tuple(dict.fromkeys(linter.registry.discovered_suffixes))
        named_like_models = tuple(linter.registry.suffixes)
        sys.stderr.write(f"pwlint: warning: {explain(args.paths, searched, SKIPPED_DIRS, named_like_models)}\n")
    return result


def _lint_with_targets(linter, args, progress):
    """Files and code targets in the order given (serially: a target imports the user's
    code into this process)."""
    from pwlint.engine import LintResult
    from pwlint.targets import is_code_target, lint_target

    result = LintResult()
    for path in args.paths:
        if is_code_target(path):
            result.files.append(lint_target(linter, path, args.input_shape, args.input_dtype))
        else:
            result.files += linter.lint_paths([path], progress=progress, jobs=1).files
    return result


def _write_baseline(result, path: str) -> int:
    from pwlint import baseline
    from pwlint.errors import PwlintError

    if result.errors:  # a baseline without an unreadable model's entries would unhide them later
        raise PwlintError(f"{path} not written: {len(result.errors)} model(s) could not be read")
    count = baseline.write_baseline(result, path)
    sys.stderr.write(f"pwlint: recorded {count} finding{'s' if count != 1 else ''} in {path}\n")
    return 0


def _report(reporter, result, args) -> None:
    """The report, to the output file or stdout, then --statistics (on stderr when stdout
    carries a machine-readable report)."""
    if args.output_file:
        from pwlint.report_file import write_report_file

        write_report_file(args.output_file, lambda stream: reporter.report(result, stream))
    else:
        reporter.report(result, sys.stdout)
    if args.statistics:
        _statistics(result, sys.stderr if args.output_file is None and args.format != "text" else sys.stdout)
    sys.stdout.flush()


#: a file at least this large gets a progress line even when it is the only one
LARGE_FILE = 50 * 2**20


def _progress_on_terminal():
    """A progress line on stderr for many or large files, only when stderr is a terminal
    (CI logs and pre-commit output stay clean); it is cleared before the report."""
    if not sys.stderr.isatty():
        return None

    def show(index: int, total: int, path: str) -> None:
        try:
            large = os.path.getsize(path) >= LARGE_FILE
        except OSError:
            large = False
        if total > 1 or large:
            line = f"pwlint: [{index + 1}/{total}] {path}"[:200]
            sys.stderr.write(f"\r\x1b[K{line}")
            sys.stderr.flush()
            show.shown = True

    show.shown = False
    return show


def _statistics(result, stream) -> None:
    """``--statistics``: one line per rule, most frequent first, as ruff prints it."""
    from collections import Counter

    counts = Counter((f.code, f.rule) for f in result.findings)
    for (code, rule), count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        stream.write(f"{count:>5}  {code}  {rule}\n")


def _find_rule(registry, code: str):
    from pwlint.errors import PwlintError

    for rule in registry.rules.values():
        if code.upper() == rule.code or code == rule.name:
            return rule
    raise PwlintError(f"unknown rule '{code}' (see 'pwlint rules')")


def _show_rule(registry, code: str) -> int:
    rule = _find_rule(registry, code)
    print(f"# {rule.code} {rule.name}: {rule.summary}\n")
    print(f"Default severity: {rule.severity.value}\n")
    fixes = "; ".join(FIX_HELP[kind] for kind in rule.fixes) or "none (the finding is reported, not fixed)"
    print(f"Fix: {fixes}\n")
    print(rule.body)
    options = rule.options.model_fields
    if options:
        print("\n## Options")
        for field_name, info in options.items():
            description = f": {info.description}" if info.description else ""
            print(f"- `{field_name.replace('_', '-')}` (default {info.default!r}){description}")
    return 0


#: what each kind of fix means for the user, for ``pwlint rule CODE``
FIX_HELP = {
    "safe": "safe (applied by --fix; outputs unchanged, verified)",
    "unsafe": "unsafe (applied by --fix --unsafe-fixes; changes what the model computes)",
}


def _fix_column(rule) -> str:
    """``safe fix``, ``unsafe fix``, ``safe+unsafe fix`` or ``no fix``: readable without a header."""
    return "no fix" if rule.fix_label == "none" else f"{rule.fix_label} fix"


def _list_rules(registry, fmt: str) -> int:
    rules = sorted(registry.rules.values(), key=lambda r: r.code)
    if fmt == "json":
        import json

        print(json.dumps([
            {"code": r.code, "name": r.name, "severity": r.severity.value, "fixes": list(r.fixes), "summary": r.summary}
            for r in rules
        ], indent=2))
        return 0
    for rule in rules:
        print(f"{rule.code}  {rule.name:<24} {rule.severity.value:<8} {_fix_column(rule):<16} {rule.summary}")
    return 0


def _list_plugins(registry) -> int:
    for plugin, provided in registry.provided.items():
        print(f"{plugin}: {', '.join(provided) if provided else '(nothing registered)'}")
    return 0
