"""The ``pricebench`` command line.

    pricebench run [SUITE ...]     run suites (default: the quick suite) and write leaderboards
    pricebench show PATH           re-render a saved leaderboard
    pricebench plugins [--json]    installed plugins, versions and what they register
    pricebench methods [--json]    registered methods with devices and settings
    pricebench suites              the suites shipped with pricebench
    pricebench mlmc-test           Giles' multilevel Monte Carlo convergence and complexity test

Exit codes: 0 success, 1 a run-time failure, 2 bad input (suite, option,
plugin set); bad input writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import bench
from bench import plugins as plugin_host
from bench import executors, report, runner, suite as suite_mod
from bench.plugins import PluginError, PluginLoadWarning

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pricebench",
        description="Benchmark derivative-pricing methods on accuracy and CPU/GPU latency.",
    )
    parser.add_argument("--version", action="version", version=f"pricebench {bench.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugins-dir", metavar="DIR", help="also load loose *.py plugin modules from DIR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run suites and write leaderboards")
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help="suite files or names of shipped suites (default: quick)")
    p.add_argument("--task", action="append", default=[], metavar="PATTERN",
                   help="run only tasks whose name matches (glob; repeatable)")
    p.add_argument("--method", action="append", default=[], metavar="PATTERN",
                   help="run only methods whose name matches (glob; repeatable; the baseline always runs)")
    p.add_argument("--device", choices=runner.DEVICE_CHOICES, default="default",
                   help="cpu, cuda or all (default: the devices each task names)")
    p.add_argument("--out", default="results", metavar="DIR", help="results folder (default: ./results)")
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

    p = sub.add_parser("show", parents=[common], help="re-render a saved leaderboard")
    p.add_argument("path", help="a run folder or its leaderboard.csv")

    p = sub.add_parser("plugins", parents=[common], help="list plugins and what they register")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("methods", parents=[common], help="list registered methods")
    p.add_argument("--kind", choices=("pricer", "root_finder", "approximator"))
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("suites", help="list the suites shipped with pricebench")

    p = sub.add_parser(
        "mlmc-test", parents=[common], help="Giles' multilevel Monte Carlo test: rates, savings over plain MC",
        description="Giles' mlmc_test for the mlmc pricer's level estimators: a convergence test on levels 0..L "
                    "(means, variances, kurtosis, consistency, fitted alpha/beta/gamma), a complexity test per eps "
                    "(MLMC cost against two plain-MC costs: 'MC cost (level L)' on the finest MLMC level, Giles' "
                    "convention, and 'MC cost (optimal h)' with the optimal number of steps n = ceil(T/h*), "
                    "c h*^alpha = eps/sqrt(2), from the weak-error model |E[P_h] - P| ~ c h^alpha fitted to the "
                    "level corrections; savings and fitted cost-vs-eps slopes of each; N_l) and seed 002's MSE "
                    "analysis per level (bias estimated from h vs h/M, beside the exact bias: for black_scholes "
                    "E[P_h - P_exact] on the same Brownian path with its standard error, for other models "
                    "E[P_h] - exact value from independent samples); tables on the console, CSV files, "
                    "report.txt, summary.json and PNG plots in --out. Defaults: Giles' GBM call (black_scholes, "
                    "S=K=100, T=1, r=0.05, sigma=0.2; other models have default parameters too). Theory for GBM: "
                    "Euler alpha = 1, beta = 1; Milstein alpha = 1, beta = 2; gamma = 1.")
    p.add_argument("--model", default="black_scholes", help="model (default black_scholes)")
    p.add_argument("--product", default=None, help="product (default european_call; zero_coupon_bond for "
                   "black_karasinski)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a model parameter (repeatable); overrides the model's defaults here")
    p.add_argument("--scheme", choices=("auto", "euler", "milstein"), default="auto",
                   help="auto (milstein for black_scholes, else euler), euler or milstein")
    p.add_argument("--M", type=_count(2), default=4, help="refinement factor (default 4)")
    p.add_argument("--N", type=_count(2), default=20_000, help="samples per level in the convergence test")
    p.add_argument("--L", type=_count(2), default=6, help="levels 0..L in the convergence test (default 6)")
    p.add_argument("--N0", type=_count(1), default=1000, help="pilot samples per new level (default 1000)")
    p.add_argument("--eps", default="0.1,0.05,0.02,0.01,0.005", metavar="LIST",
                   help="comma-separated target RMS errors (default 0.1,0.05,0.02,0.01,0.005)")
    p.add_argument("--Lmin", type=_count(2), default=2, help="initial finest level (default 2)")
    p.add_argument("--Lmax", type=_count(2), default=10, help="finest level allowed (default 10)")
    p.add_argument("--repeats", type=_count(1), default=1,
                   help="independent MLMC runs per eps, for the measured RMS error (default 1)")
    p.add_argument("--exact", type=float, default=None,
                   help="exact value (default: closed_form, heston_integration or fd, as the model allows)")
    p.add_argument("--mse-paths", type=_count(1), default=100_000,
                   help="paths of the plain MC estimator in seed 002's MSE analysis (default 100000)")
    p.add_argument("--exact-paths", type=_count(2), default=None,
                   help="paths per level of seed 002's same-path exact coupling (black_scholes; default 10 x --N)")
    p.add_argument("--alpha", type=_positive_float, default=None,
                   help="weak rate |E Y_l| ~ h^alpha for the complexity runs, the optimal-h MC cost and seed 002's "
                        "h-vs-h/M bias estimate (default: fitted by the convergence test; 1 for the estimate)")
    p.add_argument("--beta", type=_positive_float, default=None,
                   help="variance rate V[Y_l] ~ h^beta for the complexity runs (default: fitted)")
    p.add_argument("--gamma", type=_positive_float, default=None,
                   help="cost rate C_l ~ h^-gamma for the complexity runs and the optimal-h MC cost "
                        "(default: fitted)")
    p.add_argument("--refit", action="store_true",
                   help="let each MLMC run fit alpha, beta, gamma itself (default: use the convergence test's, as "
                        "Giles' mlmc_test does); rates given by --alpha/--beta/--gamma stay fixed")
    p.add_argument("--seed", type=_count(0), default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default results/mlmc_test/<run-id>)")
    p.add_argument("--threads", type=_count(1), help="limit numba threads (default: all)")
    return parser


def _load_registry(args, err: Console):
    """Load plugins, reporting each broken one once; install as the process registry."""
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
                   resume=args.resume,
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
            out.print(f"[green]wrote[/] {result.directory / report.CSV_NAME} and {report.JSON_NAME}")
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
    for col in ("plugin", "version", "source", "registers"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["version"], r["source"],
                      f"[red]skipped: {r['error']}[/]" if r["error"] else ", ".join(r["registers"]))
    out.print(table)
    return EXIT_OK


def cmd_methods(args, out: Console, err: Console) -> int:
    _load_registry(args, err)
    rows = bench.methods(args.kind)
    if args.json:
        out.print_json(json.dumps(rows))
        return EXIT_OK
    table = Table(title="pricebench methods", title_justify="left")
    for col in ("method", "kind", "version", "plugin", "devices", "prices / settings"):
        table.add_column(col)
    for r in rows:
        supports = "; ".join(f"{m}: {', '.join(p)}" for m, p in r["supports"].items())
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        table.add_row(r["name"], r["kind"], r["version"], r["plugin"], ", ".join(r["devices"]),
                      "\n".join(filter(None, [supports, settings])))
    out.print(table)
    return EXIT_OK


def cmd_suites(args, out: Console, err: Console) -> int:
    for name in suite_mod.shipped_suites():
        out.print(name)
    return EXIT_OK


# default parameters of `mlmc-test` per model: Giles' GBM call, and a standard case of each other model
MLMC_TEST_DEFAULTS = {
    "black_scholes": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.05, "sigma": 0.2},
    "heston": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.0, "v0": 0.0175, "kappa": 1.5768, "theta": 0.0398,
               "xi": 0.5751, "rho": -0.5711},
    "cev": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.05, "sigma": 2.0, "beta": 0.5},
    "sinh_lv": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.05, "lam": 20.0},
    "black_karasinski": {"r0": 0.05, "alpha": 1.0, "sigma": 0.2, "mu": 0.05, "T": 1.0},
}
MLMC_TEST_REFERENCE = {"black_scholes": "closed_form", "cev": "closed_form", "sinh_lv": "closed_form",
                       "heston": "heston_integration", "black_karasinski": "fd"}


def cmd_mlmc_test(args, out: Console, err: Console) -> int:
    import math

    from bench import environment, multilevel

    def usage(message: str) -> int:
        err.print(f"[bold red]error:[/] mlmc-test: {message}", highlight=False)
        return EXIT_USAGE

    registry = _load_registry(args, err)
    try:
        mdl = registry.model(args.model)
    except (KeyError, ValueError) as exc:
        return usage(str(exc))
    product = args.product or ("zero_coupon_bond" if args.model == "black_karasinski" else "european_call")
    params = dict(MLMC_TEST_DEFAULTS.get(args.model, {}))
    for item in args.param:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            return usage(f"--param expects NAME=VALUE, got {item!r}")
        try:
            params[name.strip()] = float(text)
        except ValueError:
            return usage(f"--param {name.strip()}: expected a number, got {text!r}")
    try:
        eps = [float(e) for e in args.eps.split(",") if e.strip()]
    except ValueError:
        return usage(f"--eps expects comma-separated numbers, got {args.eps!r}")
    if not eps or not all(math.isfinite(e) and e > 0 for e in eps):
        return usage(f"--eps values must be positive, got {args.eps!r}")
    if args.Lmax < args.Lmin:
        return usage(f"--Lmax ({args.Lmax}) must be >= --Lmin ({args.Lmin})")
    if args.exact is not None and not math.isfinite(args.exact):
        return usage(f"--exact must be finite, got {args.exact!r}")
    out_dir = Path(args.out) if args.out else Path("results") / "mlmc_test" / runner.new_run_id()
    if out_dir.exists() and not out_dir.is_dir():
        return usage(f"--out {out_dir} is a file, not a folder")
    with environment.limit_threads(args.threads):
        try:
            mdl.check_product(product)
            cls = registry.get("pricer", "mlmc")
            pricer = cls(M=args.M, scheme=args.scheme, N0=args.N0, Lmin=args.Lmin, Lmax=args.Lmax, seed=args.seed)
            level_fn = pricer.level_function(mdl, product, params)
            scheme = pricer.resolved_scheme(mdl.name)
        except (KeyError, ValueError) as exc:
            return usage(str(exc))
        exact, source = args.exact, "--exact"
        if exact is None and MLMC_TEST_REFERENCE.get(mdl.name) in registry.names("pricer"):
            source = MLMC_TEST_REFERENCE[mdl.name]
            try:
                exact = float(bench.price(source, model=mdl.name, product=product, **params))
            except ValueError:
                exact = None
            if exact is not None and not math.isfinite(exact):
                exact = None
        meta = {"model": mdl.name, "product": product, "scheme": scheme, "params": params, "seed": args.seed,
                "exact_source": source if exact is not None else None, "threads": args.threads}
        out.print(f"[bold]mlmc-test[/] {mdl.name} · {product} · {scheme} · M = {args.M} · "
                  + ", ".join(f"{k}={v:g}" for k, v in params.items())
                  + (f" · exact {exact:.10g} ({source})" if exact is not None else ""), highlight=False)
        result = multilevel.mlmc_test(
            level_fn, args.M, args.N, args.L, args.N0, eps, args.Lmin, args.Lmax, exact=exact,
            repeats=args.repeats, mse_paths=args.mse_paths, exact_paths=args.exact_paths, refit=args.refit,
            alpha=args.alpha, beta=args.beta, gamma=args.gamma,
            weak_order=args.alpha if args.alpha is not None else 1.0, meta=meta,
            on_stage=lambda text: out.print(f"[dim]{text}[/]", highlight=False))
    multilevel.render(result, out)
    multilevel.write_report(result, out_dir)
    out.print(f"[green]wrote[/] {out_dir} ({multilevel.REPORT_TXT}, CSV files, {multilevel.COST_PNG}, "
              f"{multilevel.LEVELS_PNG}) in {result.timings['total_s']:.1f} s")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "show": cmd_show, "plugins": cmd_plugins, "methods": cmd_methods, "suites": cmd_suites,
            "mlmc-test": cmd_mlmc_test}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    out = Console()
    err = Console(stderr=True, soft_wrap=True)
    try:
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
        err.print("[red]interrupted[/] before any cell ran: nothing was saved")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
