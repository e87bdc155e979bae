"""The ``pricebench`` command line.

    pricebench run [SUITE ...]     run suites (default: the quick suite) and write leaderboards
    pricebench show PATH           re-render a saved leaderboard
    pricebench plugins [--json]    installed plugins, versions and what they register
    pricebench methods [--json]    registered methods with devices and settings
    pricebench suites              the suites shipped with pricebench
    pricebench compare BASE NEW    cell-by-cell verdicts between two runs; exit 1 on a regression
    pricebench baseline save RUN   promote runs to results/baselines/<machine>/<suite>.json
    pricebench history DIR...      each cell's latency and accuracy across runs (table and plot)
    pricebench report RUN_DIR      a run's self-contained HTML report (RUN_DIR/report.html)
    pricebench COMMAND ...         a command a plugin registers (``register_commands``)

Plugins load before the command line is parsed, since they may add commands;
a plugin command named like a built-in one (or a reserved name) is an error.

Exit codes: 0 success, 1 a run-time failure, 2 bad input (suite, option,
plugin set); bad input writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import bench
from bench import plugins as plugin_host
from bench.commands import count_arg
from bench import executors, report, runner, suite as suite_mod
from bench.commands import Command
from bench.plugins import PluginError, PluginLoadWarning
from bench.report.files import folder_summary

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


_count = count_arg  # an integer option >= minimum


def _parser(commands: Mapping[str, tuple[Command, str]] | None = None) -> argparse.ArgumentParser:
    """The argument parser: the built-in commands, then ``commands`` (name -> (command, plugin))."""
    parser = argparse.ArgumentParser(
        prog="pricebench",
        description="Benchmark derivative-pricing methods on accuracy and CPU/GPU latency.",
    )
    parser.add_argument("--version", action="version", version=f"pricebench {bench.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugins-dir", metavar="DIR", help="also load loose *.py plugin modules from DIR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run suites and write leaderboards",
                       description="Run suites (files, or names of shipped suites; default: quick): every task's "
                                   "cells, timed and scored, into <out>/<suite>/<run-id>/ (leaderboard, targets, "
                                   "plots, run.json and the raw record).")
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help="suite files or names of shipped suites (default: quick)")
    p.add_argument("--task", action="append", default=[], metavar="PATTERN",
                   help="run only tasks whose name matches (glob; repeatable)")
    p.add_argument("--method", action="append", default=[], metavar="PATTERN",
                   help="run only methods whose name matches (glob; repeatable; the baseline always runs)")
    p.add_argument("--device", choices=runner.DEVICE_CHOICES, default="default",
                   help="default: the devices each task (or method) names; cpu or cuda: every cell on that device "
                        "(a method without that path gets a row saying so); all: cpu, and cuda for each method "
                        "that has a cuda path")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results root: each run writes <DIR>/<suite>/<run-id>/ (default: ./results)")
    p.add_argument("--seed", type=_count(0), help="override the suites' seeds")
    p.add_argument("--threads", type=_count(1),
                   help="threads per cell for BLAS/torch/numba (default: the suite's, else 1)")
    p.add_argument("--executor", choices=tuple(executors.EXECUTORS), default="serial",
                   help="where cells run: serial (this process), process (a worker process the timeout can kill), "
                        "dask (a dask.distributed cluster)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask scheduler address (tcp://host:8786); default: a LocalCluster on this machine")
    p.add_argument("--workers", type=_count(1), metavar="N",
                   help="LocalCluster workers for --executor dask (default: CPUs / threads)")
    p.add_argument("--save-outputs", action="store_true",
                   help="also save every cell's outputs (outputs/<cell_key>.npz) so scores can be recomputed")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="complete an interrupted run: compute only its missing cells (same suite and seed)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where labelled training data is cached (default: <out>/cache)")

    p = sub.add_parser("show", parents=[common], help="re-render a saved leaderboard",
                       description="Re-render a saved run's leaderboards (a run folder or its leaderboard.csv) and "
                                   "say whether the run finished.")
    p.add_argument("path", help="a run folder or its leaderboard.csv")

    p = sub.add_parser("plugins", parents=[common], help="list plugins and what they register",
                       description="List the loaded plugins (built-in and third-party): name, version, source and "
                                   "what each registers; a plugin that failed to load says why.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("methods", parents=[common], help="list registered methods and their settings",
                       description="List registered methods: kind, version, plugin, devices, models and products, "
                                   "and every setting with its type, default, allowed values and description.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default: all)")
    p.add_argument("--kind", choices=("pricer", "root_finder", "approximator"),
                   help="only methods of this kind: pricer, root_finder or approximator (default: all kinds)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("suites", parents=[common], help="list the suites shipped with pricebench",
                   description="List the suites shipped with pricebench: each one's description, number of tasks "
                               "and measured run time; run one with `pricebench run NAME`.")

    for name, (command, plugin) in (commands or {}).items():
        p = sub.add_parser(name, parents=[common], help=command.help,
                           description=command.description or command.help or None)
        try:
            command.add_arguments(p)
        except Exception as exc:  # noqa: BLE001 - a faulty plugin is bad input, named
            raise PluginError(f"plugin {plugin!r}: command {name!r} cannot add its options: "
                              f"{type(exc).__name__}: {exc}") from None
    return parser


# the registry main() loaded before parsing, keyed by what it depends on; the command's own
# _load_registry takes it instead of loading (and warning about broken plugins) twice
_preloaded: dict[tuple[str | None, str | None], plugin_host.Registry] = {}


def _load_registry(args, err: Console):
    """Load plugins, reporting each broken one once; install as the process registry."""
    key = (getattr(args, "plugins_dir", None), os.environ.get(plugin_host.ENV_VAR))
    if key in _preloaded:
        registry = _preloaded.pop(key)
        plugin_host.set_registry(registry)
        return registry
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginLoadWarning)
        registry = plugin_host.load(plugins_dir=getattr(args, "plugins_dir", None))
    for w in caught:
        if issubclass(w.category, PluginLoadWarning):
            err.print(f"[yellow]warning:[/] {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    plugin_host.set_registry(registry)
    return registry


def cmd_run(args, out: Console, err: Console) -> int:
    registry = _load_registry(args, err)
    names = args.suites or [str(suite_mod.default_suite_path())]
    suites = [suite_mod.load(name, registry) for name in names]  # validate all before running any
    if args.scheduler and args.executor != "dask":
        raise suite_mod.SuiteError("--scheduler", "needs --executor dask")
    if args.workers and args.executor != "dask":
        raise suite_mod.SuiteError("--workers", "needs --executor dask")
    if args.resume and len(suites) != 1:
        raise suite_mod.SuiteError("--resume", "resumes one run: name exactly one suite")
    options = dict(out_dir=args.out, device=args.device, tasks=args.task, methods=args.method, seed=args.seed,
                   threads=args.threads, executor=args.executor, save_outputs=args.save_outputs,
                   resume=args.resume, cache_dir=args.cache_dir,
                   executor_options={"scheduler": args.scheduler, "workers": args.workers})
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise suite_mod.SuiteError(out_dir, "--out must be a folder, and this is a file")
    for s in suites:
        probe = runner.Runner(registry, **options)
        if not probe.plan(s):
            raise suite_mod.SuiteError(s.path, "no task or method matches the --task/--method filters")
    for s in suites:
        progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=out, transient=True)
        bar = None

        def on_start(total: int) -> None:
            nonlocal bar
            bar = progress.add_task(s.name, total=total)

        def on_cell(row: dict) -> None:
            progress.update(bar, advance=1, description=f"{s.name}: {row['task']} · {row['method']} · {row['device']}")

        def on_task(task, rows) -> None:
            progress.console.print(report.task_table(task.name, rows, out.width))
            targets = report.targets_table(task.name, rows)
            if targets is not None:
                progress.console.print(targets)

        with progress:
            result = runner.Runner(registry, on_start=on_start, on_cell=on_cell, on_task=on_task, **options).run(s)
        if result.directory is not None:
            out.print(Text.assemble(("wrote", "green"), f" {result.directory}{os.sep}: "
                                    f"{folder_summary(result.directory)}"), highlight=False)
    return EXIT_OK


def cmd_show(args, out: Console, err: Console) -> int:
    frame, meta = report.read(args.path)
    rows = frame.to_dict("records")
    title = None
    if meta:
        machine = meta.get("machine", {})
        title = (f"{meta.get('suite')} · run {meta.get('run_id')} · seed {meta.get('seed')} · "
                 f"{machine.get('cpu')}" + (f" · {machine['gpu']}" if machine.get("gpu") else ""))
    report.render(rows, out, title)
    if meta and meta.get("status", "finished" if meta.get("finished") else "unfinished") != "finished":
        planned = meta.get("cells_planned")
        count = f"{len(rows)} of {planned}" if planned else f"{len(rows)}"
        folder = Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent
        out.print(f"[bold yellow]this run did not finish[/] ({meta.get('status', 'no finish time')}): {count} cells "
                  f"saved; complete it with: pricebench run {meta.get('suite_path', meta.get('suite'))} "
                  f"--resume {folder}", highlight=False)
    return EXIT_OK


def cmd_plugins(args, out: Console, err: Console) -> int:
    registry = _load_registry(args, err)
    rows = [
        {"name": p.name, "version": p.version, "source": p.source,
         "registers": [f"{kind}:{name}" for kind, name in p.registered], "error": p.error}
        for p in registry.plugins
    ]
    if args.json:
        out.print_json(json.dumps(rows))
        return EXIT_OK
    table = Table(title="pricebench plugins", title_justify="left")
    table.add_column("plugin", overflow="fold")
    table.add_column("version", overflow="fold")
    table.add_column("source", overflow="fold")
    table.add_column("registers", overflow="fold", ratio=1)
    for r in rows:
        table.add_row(r["name"], r["version"], r["source"],
                      f"[red]skipped: {r['error']}[/]" if r["error"] else ", ".join(r["registers"]))
    out.print(table)
    return EXIT_OK


def _allowed(spec: dict[str, Any]) -> str:
    """A setting's admissible values in a few characters: its choices, or its range."""
    if "choices" in spec:
        return " | ".join("none" if c is None else str(c) for c in spec["choices"])
    lo, hi = spec.get("min"), spec.get("max")
    if lo is None and hi is None:
        return ""
    return f"{'-inf' if lo is None else f'{lo:g}'} .. {'inf' if hi is None else f'{hi:g}'}"


def cmd_methods(args, out: Console, err: Console) -> int:
    _load_registry(args, err)
    rows = bench.methods(args.kind)
    if args.names:
        unknown = sorted(set(args.names) - {r["name"] for r in rows})
        if unknown:
            err.print(f"[bold red]error:[/] no {args.kind or 'method'} named {unknown[0]!r} "
                      f"(known: {', '.join(sorted({r['name'] for r in rows}))})", highlight=False)
            return EXIT_USAGE
        rows = [r for r in rows if r["name"] in args.names]
    if args.json:
        out.print_json(json.dumps(rows, default=str))
        return EXIT_OK
    # one block per method, each setting on its own row: readable at 80 columns, nothing cut
    for r in rows:
        head = (f"[bold]{r['name']}[/] {r['kind'].replace('_', ' ')} v{r['version']} · plugin {r['plugin']} · "
                f"{', '.join(r['devices'])}")
        out.print(head, highlight=False)
        if r["description"]:
            out.print(Padding(Text(r["description"]), (0, 0, 0, 2)))
        for model, products in r["supports"].items():
            out.print(Padding(Text.assemble((f"{model}: ", "dim"), ", ".join(products)), (0, 0, 0, 2)))
        if r["setting_specs"]:
            table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, expand=False)
            table.add_column("  setting", no_wrap=True, style="cyan")
            table.add_column("type", no_wrap=True)
            table.add_column("default", overflow="fold", max_width=14)
            table.add_column("allowed", overflow="fold", max_width=18)
            table.add_column("description", overflow="fold", ratio=1)
            for name, spec in r["setting_specs"].items():
                table.add_row(f"  {name}", spec["type"], Text(repr(spec["default"])), Text(_allowed(spec)),
                              Text(spec["description"]))  # Text: "[a, b]" in a description is not markup
            out.print(table)
        out.print()
    return EXIT_OK


def cmd_suites(args, out: Console, err: Console) -> int:
    registry = _load_registry(args, err)
    table = Table(title="suites shipped with pricebench (run one: pricebench run NAME)", title_justify="left",
                  box=None, padding=(0, 1), pad_edge=False)
    table.add_column("suite", no_wrap=True, style="bold")
    table.add_column("tasks", justify="right", no_wrap=True)
    table.add_column("run time", overflow="fold", max_width=16)
    table.add_column("description", overflow="fold", ratio=1)
    rows = []
    for name in suite_mod.shipped_suites():
        try:
            s = suite_mod.load(name, registry)
        except suite_mod.SuiteError as exc:  # a plugin it needs is missing, say: the others still list
            rows.append((name, "-", ("", ""), Text(f"cannot be loaded here: {exc}", style="red")))
            continue
        rows.append((name, str(len(s.tasks)), suite_mod.runtime_parts(s.runtime), s.description))
    machines = {where for _, _, (_, where), _ in rows if where}
    for name, tasks, (time, where), description in rows:  # one machine: named once, under the table
        shown = (time if len(machines) == 1 else f"{time} ({where})") if time else "not measured"
        table.add_row(name, tasks, shown, description)
    out.print(table)
    where = f"on a {next(iter(machines))}" if len(machines) == 1 else "on the machine named"
    out.print(f"run time: the whole suite, measured {where} (yours differs; suites that train approximators "
              "cache their labelled data, so a second run is shorter)", style="dim", highlight=False)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "show": cmd_show, "plugins": cmd_plugins, "methods": cmd_methods, "suites": cmd_suites}
# built-in commands written as Command classes (the contract plugins use), one module each:
# "module:Class" so that each imports only when the command line is parsed
BUILTIN_COMMANDS = ("bench.compare:CompareCommand", "bench.compare:BaselineCommand", "bench.history:HistoryCommand",
                    "bench.report.html:ReportCommand")
RESERVED_COMMANDS = ("compare", "baseline", "history", "report")  # no plugin may take these either


def _builtin_commands() -> dict[str, tuple[Command, str]]:
    import importlib

    commands = {}
    for ref in BUILTIN_COMMANDS:
        module, cls = ref.split(":")
        command = getattr(importlib.import_module(module), cls)()
        commands[command.name] = (command, "pricebench")
    return commands


def _plugins_dir_option(argv: list[str]) -> str | None:
    """The value of ``--plugins-dir`` on the command line, read before parsing (plugin commands
    can only be parsed once the plugins that register them are loaded)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--plugins-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--plugins-dir="):
            return arg.split("=", 1)[1]
    return None


def _plugin_commands(argv: list[str], err: Console) -> dict[str, tuple[Command, str]]:
    """Load the plugins (``--plugins-dir`` and ``PRICEBENCH_PLUGINS`` respected) and return the
    commands they register, name -> (command, plugin); PluginError for a name that is taken."""
    plugins_dir = _plugins_dir_option(argv)
    _preloaded.clear()
    registry = _load_registry(argparse.Namespace(plugins_dir=plugins_dir), err)
    _preloaded[(plugins_dir, os.environ.get(plugin_host.ENV_VAR))] = registry
    commands = {}
    for name, entry in sorted(registry.entries["command"].items()):
        if name in COMMANDS or name in RESERVED_COMMANDS:
            raise PluginError(f"plugin {entry.plugin!r} registers command {name!r}, a name pricebench keeps for its "
                              f"own commands ({', '.join([*COMMANDS, *RESERVED_COMMANDS])}); rename it, or limit "
                              f"which plugins load with {plugin_host.ENV_VAR}")
        try:
            commands[name] = (entry.cls(), entry.plugin)
        except Exception as exc:  # noqa: BLE001 - a faulty plugin is bad input, named
            raise PluginError(f"plugin {entry.plugin!r}: command {name!r} cannot be created: "
                              f"{type(exc).__name__}: {exc}") from None
    return commands


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    out = Console()
    err = Console(stderr=True, soft_wrap=True)
    try:
        commands = _builtin_commands() | _plugin_commands(argv, err)
        parser = _parser(commands)
    except PluginError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *argv])
    try:
        if args.command in commands:
            return commands[args.command][0].run(args, out, err)
        return COMMANDS[args.command](args, out, err)
    except (suite_mod.SuiteError, PluginError, executors.ExecutorError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_USAGE
    except OSError as exc:  # writing results: disk full, permissions
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_FAILURE
    except runner.RunInterrupted as exc:
        err.print(f"[red]{exc.message}[/]", highlight=False)
        return 130
    except KeyboardInterrupt:
        err.print("[red]interrupted[/] before the run's folder existed: no cell was saved")
        return 130
    finally:
        _preloaded.clear()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
