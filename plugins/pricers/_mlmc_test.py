"""``pricebench mlmc-test``: Giles' ``mlmc_test`` report for the ``mlmc`` pricer's level
estimators, the presentation half of :mod:`._mlmc_driver`.

The driver computes (:func:`._mlmc_driver.mlmc_test`: the convergence test per
level, the fitted rates, the complexity test per eps, the MSE split of plain
Monte Carlo after Spence, Brolly and Xue); this module turns its
:class:`~._mlmc_driver.MLMCTestResult` into
rich tables (:func:`render`), the plain-text report laid out like Giles'
output (:func:`report_text`), CSV files, ``summary.json`` and two PNG plots
(:func:`write_report`, every file written atomically), and holds the command
itself (:class:`MLMCTestCommand`), which the ``mlmc`` plugin registers
through ``register_commands``. Importing it is cheap: rich, matplotlib and
pandas load only when the command runs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.commands import Command, count_arg
from pricebench_plugins.pricers._mlmc_driver import BIAS_INDEPENDENT, BIAS_SAME_PATH, MLMCTestResult

EXIT_OK, EXIT_USAGE = 0, 2

# default parameters of `mlmc-test` per model: Giles' GBM call, and a standard case of each other model
DEFAULTS = {
    "black_scholes": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.05, "sigma": 0.2},
    "heston": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.0, "v0": 0.0175, "kappa": 1.5768, "theta": 0.0398,
               "xi": 0.5751, "rho": -0.5711},
    "cev": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.05, "sigma": 2.0, "beta": 0.5},
    "sinh_lv": {"S": 100.0, "K": 100.0, "T": 1.0, "r": 0.05, "lam": 20.0},
    "black_karasinski": {"r0": 0.05, "alpha": 1.0, "sigma": 0.2, "mu": 0.05, "T": 1.0},
}
# the pricer whose value is the exact one, per model (used when installed and --exact is not given)
REFERENCE = {"black_scholes": "closed_form", "cev": "closed_form", "sinh_lv": "closed_form",
             "heston": "heston_integration", "black_karasinski": "fd"}


def _g(x: Any, fmt: str = ".4e") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "-" if not math.isfinite(v) else format(v, fmt)


def _levels(ls: Sequence[int]) -> str:
    ls = list(ls)
    if not ls:
        return "none"
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"{ls[0]}..{ls[-1]}"
    return ", ".join(str(l) for l in ls)


def _bias_target(theta: float) -> str:
    return "eps/sqrt(2)" if theta == 0.5 else f"sqrt({theta:g}) eps"


def _slope_lines(res: MLMCTestResult) -> list[str]:
    """The cost-slope summary and the two plain-MC cost models, as plain lines."""
    sl, w, s = res.cost_slopes, res.mc_optimal, res.settings
    theta = s.get("theta", 0.5)
    var = "eps^2/2" if theta == 0.5 else f"{1 - theta:g} eps^2"
    lines = [f"cost ~ eps^s fitted over eps: MLMC s = {sl['mlmc']:.3f} (theory "
             f"{sl.get('mlmc_theory', math.nan):.2f}{', times log^2 eps' if _beta_eq_gamma(res) else ''}); "
             f"MC cost (level L) s = {sl['mc']:.3f}; MC cost (optimal h) s = {sl.get('mc_opt', math.nan):.3f} "
             f"(theory -2 - gamma/alpha = {sl.get('mc_opt_theory', math.nan):.2f})",
             f"MC cost (level L): V[P_L] C_L / ({var}) on the finest MLMC level L, C_L: {s.get('mc_cost')} "
             "(Giles' convention; with his C_L, fine + coarse path, the savings are "
             + ", ".join(f"{v:.1f}" for v in res.complexity.savings_giles) + ")"]
    if w:
        lines.append(f"MC cost (optimal h): n = ceil(T/h*) steps, c h*^alpha = {_bias_target(theta)}, from "
                     f"|E[P_h] - P| ~ c h^alpha with alpha = {w['alpha']:.3f} ({w['alpha_source']}), "
                     f"c = {_g(w['c'], '.4g')} (fitted to |E Y_l| = c h_l^alpha (M^alpha - 1) over levels "
                     f"{_levels(w['c_levels'])}, h in units of T); cost V[P] C_0 n^gamma / ({var}) with "
                     f"V[P] = {w['var_P']:.4g} (level {s['L']}), C_0 = {w['C0']:g}, gamma = {w['gamma']:.3f} "
                     f"({w['gamma_source']})")
    return lines


def _beta_eq_gamma(res: MLMCTestResult) -> bool:
    b = res.settings.get("beta") or res.rates.get("beta", math.nan)
    g = res.settings.get("gamma") or res.rates.get("gamma", math.nan)
    return bool(abs(b - g) < 0.2)


def _mse_split_caption(res: MLMCTestResult) -> tuple[str, str]:
    """(title, explanation) of the MSE-split table (Spence, Brolly and Xue, "Efficient Approximation of
    Pricing Functions", section 2.2)."""
    s, info = res.settings, res.mse_split_info
    title = (f"MSE split (Spence, Brolly & Xue): plain MC with {s['mse_paths']} paths on h = T/{s['M']}^l, "
             "MSE = V/N + bias^2")
    p = s.get("weak_order", 1.0)
    est = f"bias est = M^p/(M^p-1) |E[P_h - P_(h/M)]| from the coupled levels (p = {p:g})"
    method = info.get("bias_exact")
    if method == BIAS_SAME_PATH:
        text = (f"{est}; bias = E[P_h - P_exact] on the same Brownian path (exact solution "
                f"S0 exp((r - q - sigma^2/2) T + sigma W_T)), {info.get('exact_paths')} paths per level, "
                "+- its se; "
                "ratio = bias(M h) / bias(h) where both exceed 3 se")
    elif method == BIAS_INDEPENDENT:
        text = (f"{est}; bias = E[P_h] - exact value from the convergence test's {info.get('exact_paths')} "
                "independent samples, +- se = sqrt(V[P_h]/N): this model has no exact path solution, so the se "
                "swamps the bias beyond the coarsest levels")
    else:
        text = f"{est}; no exact value and no exact path solution: estimated bias only"
    return title, text


def _mse_split_footer(res: MLMCTestResult) -> str | None:
    info = res.mse_split_info
    if info.get("bias_exact") is None or "alpha_exact" not in info:
        return None
    sd = res.mse_split
    sig = info.get("significant_levels", [])
    ratio = ", ".join(_g(v, ".2f") for l, v in zip(sd.l, sd.bias_est_over_exact) if l in sig)
    lv = info["alpha_exact_levels"]
    fit = (f"exact bias ~ h^p: p = {_g(info['alpha_exact'], '.3f')} fitted over levels {_levels(lv)}"
           if len(lv) >= 2 else f"exact bias ~ h^p: too few levels l >= 1 ({_levels(lv)}) to fit p")
    return (f"{fit} (|bias| > 3 se); bias est / |bias| on levels {_levels(sig)} (|bias| > 3 se): "
            f"{ratio or '-'}")


def report_text(res: MLMCTestResult) -> str:
    """The report as plain text, laid out like Giles' ``mlmc_test`` output."""
    s = res.settings
    out = []
    star = "*" * 66
    out += [star, "*** MLMC test (pricebench, after Giles' mlmc_test)", star]
    for k, v in s.items():
        out.append(f"  {k} = {v}")
    out += ["", star, f"*** Convergence tests, kurtosis, telescoping sum check (N = {s['N']})", star, ""]
    out.append(" l   ave(Pf-Pc)    ave(Pf)    var(Pf-Pc)   var(Pf)    kurtosis    check      cost")
    out.append("-" * 86)
    for r in res.convergence.itertuples():
        out.append(f"{r.l:2d}  {r.mean_dP:11.4e} {r.mean_P:11.4e}  {r.var_dP:.3e}  {r.var_P:.3e}  "
                   f"{r.kurtosis:9.2e}  {r.check:.2e}  {r.cost:.3e}")
    q = res.rates
    out += ["", star, "*** Linear regression estimates of MLMC parameters (levels 1..L)", star, "",
            f" alpha = {q['alpha']:.4f}  (weak convergence |E Y_l| ~ h^alpha; {q['alpha_log2']:.4f} per level in log2)",
            f" beta  = {q['beta']:.4f}  (variance V[Y_l] ~ h^beta; {q['beta_log2']:.4f} per level in log2)",
            f" gamma = {q['gamma']:.4f}  (cost C_l ~ h^-gamma; {q['gamma_log2']:.4f} per level in log2)"]
    given = [f"{k} = {s[k]:g}" for k in ("alpha", "beta", "gamma") if s.get(k) is not None]
    if given:
        out.append(" given (used by the complexity tests): " + ", ".join(given))
    out += ["", star, "*** MLMC complexity tests (costs in path steps)", star, ""]
    comp = res.complexity
    nl_cols = [c for c in comp.columns if c.startswith("N_")]
    head = "   eps       value     mlmc_cost   L"
    if "rms_error" in comp:
        head += "   rms_err"
    out.append(head + "   N_l")
    out.append("-" * (len(head) + 40))
    for r in comp.to_dict("records"):
        line = f"{r['eps']:.3e} {r['value']:11.4e}  {r['mlmc_cost']:.3e} {r['L']:2d}"
        if "rms_error" in r:
            line += f"  {r['rms_error']:.2e}"
        line += "  " + " ".join(f"{int(r[c]):9d}" for c in nl_cols if r[c] > 0)
        out.append(line)
    out += ["", "   eps      mlmc_cost   MC cost (level L)  savings   MC cost (optimal h)  n = T/h*  savings",
            "-" * 92]
    for r in comp.to_dict("records"):
        out.append(f"{r['eps']:.3e}  {r['mlmc_cost']:.3e}  {r['mc_cost']:17.3e}  {r['savings']:7.2f}   "
                   f"{_g(r['mc_cost_opt'], '.3e'):>19}  {r['n_opt']:8d}  {_g(r['savings_opt'], '.2f'):>7}")
    out += [""] + [" " + line for line in _slope_lines(res)] + [""]
    title, text = _mse_split_caption(res)
    out += [star, f"*** {title}", star, "", " " + text, ""]
    sd = res.mse_split
    exact = "bias_exact" in sd
    ratio = "bias_ratio" in sd
    head = " l      h       E[P_h]      V/N        bias_est   mse_est"
    if exact:
        head += "     bias_exact (+- se)  " + ("   ratio " if ratio else "") + "   mse_exact"
    out.append(head)
    out.append("-" * len(head))
    for r in sd.to_dict("records"):
        line = (f"{r['l']:2d}  {r['h']:.3e}  {r['mean_P']:.5e}  {r['var_over_paths']:.3e}  {r['bias_est']:.3e}  "
                f"{r['mse_est']:.3e}")
        if exact:
            line += (f"  {r['bias_exact']:+.3e} ({r['bias_exact_stderr']:.1e})  "
                     + (f"{_g(r['bias_ratio'], '.2f'):>6}  " if ratio else "") + f"{r['mse_exact']:.3e}")
        out.append(line)
    foot = _mse_split_footer(res)
    if foot:
        out += ["", " " + foot]
    if res.warnings:
        out += ["", "WARNINGS:"] + [f" - {w}" for w in res.warnings]
    out += ["", "timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items()), ""]
    return "\n".join(out)


def render(res: MLMCTestResult, console=None) -> None:
    """Print the report as rich tables (laid out to fit 80 columns)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = res.settings

    def table(title, cols, caption=None):
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, caption=caption,
                  caption_justify="left")
        for col in cols:
            t.add_column(col, justify="right", no_wrap=True)
        return t

    t = table(f"MLMC convergence test: N = {s['N']} per level, M = {s['M']}",
              ("l", "ave(Pf-Pc)", "ave(Pf)", "var(Pf-Pc)", "var(Pf)", "kurt", "check", "cost", "time"))
    for r in res.convergence.itertuples():
        t.add_row(str(r.l), _g(r.mean_dP, ".3e"), _g(r.mean_P, ".5g"), _g(r.var_dP, ".2e"), _g(r.var_P, ".4g"),
                  _g(r.kurtosis, ".1f"), _g(r.check, ".2f"), _g(r.cost, ".4g"), f"{r.time_s:.2f}s")
    console.print(t)
    q = res.rates
    given = [f"{k} = {s[k]:g}" for k in ("alpha", "beta", "gamma") if s.get(k) is not None]
    console.print(f"alpha = {q['alpha']:.3f}, beta = {q['beta']:.3f}, gamma = {q['gamma']:.3f} in h units "
                  f"(levels 1..L); per level in log2: {q['alpha_log2']:.3f}, {q['beta_log2']:.3f}, "
                  f"{q['gamma_log2']:.3f}" + (f"; given: {', '.join(given)}" if given else ""), highlight=False)
    comp = res.complexity
    has_err = "rms_error" in comp
    runs = s.get("repeats", 1)
    cols = ["eps", "value", "MLMC cost", "L"]
    if has_err:
        cols += ["rms err" if runs > 1 else "error", "/eps"]
    t = table("MLMC complexity test" + (f" ({runs} runs per eps)" if runs > 1 else ""), cols + ["time"])
    for r in comp.to_dict("records"):
        cells = [f"{r['eps']:g}", _g(r["value"], ".6g"), _g(r["mlmc_cost"], ".2e"), str(r["L"])]
        if has_err:
            cells += [_g(r["rms_error"], ".2e"), _g(r["rms_over_eps"], ".2f")]
        t.add_row(*cells, f"{r['time_s']:.2f}s")
    console.print(t)
    t = table("Plain MC for the same eps: cost in path steps, savings = MC cost / MLMC cost, n = steps at h*",
              ["eps", "MC cost (level L)", "savings", "MC cost (optimal h)", "n", "savings"])
    for r in comp.to_dict("records"):
        t.add_row(f"{r['eps']:g}", _g(r["mc_cost"], ".2e"), _g(r["savings"], ".1f"),
                  _g(r["mc_cost_opt"], ".2e"), str(r["n_opt"]) if r["n_opt"] > 0 else "-",
                  _g(r["savings_opt"], ".1f"))
    console.print(t)
    for line in _slope_lines(res):
        console.print(line, highlight=False)
    nl_cols = [c for c in comp.columns if c.startswith("N_")]
    t = table("N_l: samples per level" + (" (mean over runs)" if runs > 1 else ""),
              ["eps"] + [c.split("_")[1] for c in nl_cols])
    for r in comp.to_dict("records"):
        t.add_row(f"{r['eps']:g}", *(str(int(r[c])) if r[c] > 0 else "" for c in nl_cols))
    console.print(t)
    sd = res.mse_split
    exact = "bias_exact" in sd
    ratio = "bias_ratio" in sd
    cols = ["l", "V/N", "bias est", "MSE est"]  # E[P_h] is ave(Pf) of the convergence table
    if exact:
        cols += ["bias", "± se"] + (["ratio"] if ratio else []) + ["MSE"]
    title, text = _mse_split_caption(res)
    t = table(title, cols, caption=text)
    for r in sd.to_dict("records"):
        cells = [str(r["l"]), _g(r["var_over_paths"], ".2e"),
                 _g(r["bias_est"], ".2e"), _g(r["mse_est"], ".2e")]
        if exact:
            cells += [_g(r["bias_exact"], "+.2e"), _g(r["bias_exact_stderr"], ".1e")]
            cells += [_g(r["bias_ratio"], ".2f")] if ratio else []
            cells += [_g(r["mse_exact"], ".2e")]
        t.add_row(*cells)
    console.print(t)
    foot = _mse_split_footer(res)
    if foot:
        console.print(foot, highlight=False)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


def _atomic_savefig(fig, path: Path) -> None:
    from bench.report import save_figure  # the one atomic figure writer

    save_figure(fig, path)


def _figure(size):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _title(res: MLMCTestResult) -> str:
    s = res.settings
    parts = [str(s[k]) for k in ("model", "product", "scheme") if s.get(k)]
    return " · ".join(parts + [f"M = {s['M']}"])


def plot_cost(res: MLMCTestResult, path: Path) -> None:
    """Log-log cost against eps for MLMC and plain MC, both plain-MC costs (on the
    finest MLMC level L, and at the optimal h; fitted slopes in the legend), with
    eps^2 x cost beside it (flat means O(eps^-2))."""
    comp = res.complexity
    fig = _figure((10.0, 4.2))
    ax, bx = fig.subplots(1, 2)
    e = comp.eps.to_numpy()
    sl = res.cost_slopes
    ax.loglog(e, comp.mc_cost, "s--", label=f"MC cost (level L) (slope {sl['mc']:.2f})")
    if "mc_cost_opt" in comp:
        ax.loglog(e, comp.mc_cost_opt, "^:", label=f"MC cost (optimal h) (slope {sl.get('mc_opt', math.nan):.2f}, "
                                                   f"theory {sl.get('mc_opt_theory', math.nan):.2f})")
    ax.loglog(e, comp.mlmc_cost, "o-", label=f"MLMC (slope {sl['mlmc']:.2f})")
    ax.set_xlabel("eps (target RMS error)")
    ax.set_ylabel("cost (path steps)")
    ax.set_title(f"cost against accuracy: {_title(res)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    bx.loglog(e, comp.mc_cost * e ** 2, "s--", label="MC cost (level L)")
    if "mc_cost_opt" in comp:
        bx.loglog(e, comp.mc_cost_opt * e ** 2, "^:", label="MC cost (optimal h)")
    bx.loglog(e, comp.mlmc_cost * e ** 2, "o-", label="MLMC")
    bx.set_xlabel("eps")
    bx.set_ylabel("eps^2 x cost")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=8)
    _atomic_savefig(fig, path)


def plot_levels(res: MLMCTestResult, path: Path) -> None:
    """Giles' convergence panels: log_M variance and |mean| per level, and N_l per eps."""
    conv = res.convergence
    M = res.settings["M"]
    fig = _figure((12.0, 3.8))
    ax, bx, cx = fig.subplots(1, 3)
    lm = math.log(M)
    with np.errstate(divide="ignore"):
        ax.plot(conv.l, np.log(conv.var_P) / lm, "s--", label="P_l")
        ax.plot(conv.l[1:], np.log(conv.var_dP[1:]) / lm, "o-", label="P_l - P_{l-1}")
        bx.plot(conv.l, np.log(np.abs(conv.mean_P)) / lm, "s--", label="P_l")
        bx.plot(conv.l[1:], np.log(np.abs(conv.mean_dP[1:])) / lm, "o-", label="P_l - P_{l-1}")
    q = res.rates
    ax.set_title(f"variance (beta = {q['beta']:.2f})", fontsize=9)
    bx.set_title(f"mean (alpha = {q['alpha']:.2f})", fontsize=9)
    for x, lab in ((ax, f"log_{M} variance"), (bx, f"log_{M} |mean|")):
        x.set_xlabel("level l")
        x.set_ylabel(lab)
        x.grid(True, alpha=0.3)
        x.legend(fontsize=8)
    comp = res.complexity
    for r in comp.to_dict("records"):
        n = [r[c] for c in comp.columns if c.startswith("N_") and r[c] > 0]
        cx.semilogy(range(len(n)), n, "o-", label=f"eps = {r['eps']:g}")
    cx.set_xlabel("level l")
    cx.set_ylabel("N_l")
    cx.set_title(_title(res), fontsize=9)
    cx.grid(True, which="both", alpha=0.3)
    cx.legend(fontsize=7)
    _atomic_savefig(fig, path)


CONVERGENCE_CSV = "convergence.csv"
COMPLEXITY_CSV = "complexity.csv"
MSE_SPLIT_CSV = "mse_split.csv"
REPORT_TXT = "report.txt"
SUMMARY_JSON = "summary.json"
COST_PNG = "cost_vs_eps.png"
LEVELS_PNG = "levels.png"


def write_report(res: MLMCTestResult, out_dir: str | Path) -> list[Path]:
    """Write the CSVs, the text report, a JSON summary and the two plots into
    ``out_dir``, each atomically; returns the paths."""
    from bench import atomic
    from bench.report import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in ((CONVERGENCE_CSV, res.convergence), (COMPLEXITY_CSV, res.complexity),
                        (MSE_SPLIT_CSV, res.mse_split)):
        atomic.write_with(out / name, lambda fh, f=frame: f.to_csv(fh, index=False, float_format="%.9g"))
        paths.append(out / name)
    atomic.write_text(out / REPORT_TXT, report_text(res))
    paths.append(out / REPORT_TXT)
    write_json(out / SUMMARY_JSON, {"settings": res.settings, "rates": res.rates,
                                    "cost_slopes": res.cost_slopes, "mc_optimal_h": res.mc_optimal,
                                    "mse_split": res.mse_split_info, "warnings": res.warnings,
                                    "timings": res.timings})
    paths.append(out / SUMMARY_JSON)
    plot_cost(res, out / COST_PNG)
    plot_levels(res, out / LEVELS_PNG)
    paths += [out / COST_PNG, out / LEVELS_PNG]
    return paths


# --------------------------------------------------------------------------- the command


def new_run_folder(root: str | Path) -> Path:
    """A new, exclusively created ``<root>/mlmc_test/<run-id>/``: ``--out`` is a results root, as for
    ``pricebench run`` (which writes ``<root>/<suite>/<run-id>/``), so two tests never share a folder."""
    from bench.store import RunStore

    store, _ = RunStore.create(root, "mlmc_test")
    return store.directory


_count = count_arg  # an integer option >= minimum


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


class MLMCTestCommand(Command):
    """``pricebench mlmc-test``: run :func:`._mlmc_driver.mlmc_test` on the ``mlmc``
    pricer's level function for one parameter set, print and save the report."""

    name = "mlmc-test"
    help = "Giles' multilevel Monte Carlo test: rates, savings over plain MC"
    description = (
        "Giles' mlmc_test for the mlmc pricer's level estimators: a convergence test on levels 0..L "
        "(means, variances, kurtosis, consistency, fitted alpha/beta/gamma), a complexity test per eps "
        "(MLMC cost against two plain-MC costs: 'MC cost (level L)' on the finest MLMC level, Giles' "
        "convention, and 'MC cost (optimal h)' with the optimal number of steps n = ceil(T/h*), "
        "c h*^alpha = eps/sqrt(2), from the weak-error model |E[P_h] - P| ~ c h^alpha fitted to the "
        "level corrections; savings and fitted cost-vs-eps slopes of each; N_l) and the MSE split of "
        "plain MC per level, MSE = V/N + bias^2 (Spence, Brolly and Xue, 'Efficient Approximation of "
        "Pricing Functions'; bias estimated from h vs h/M, beside the exact bias: for black_scholes "
        "E[P_h - P_exact] on the same Brownian path with its standard error, for other models "
        "E[P_h] - exact value from independent samples); tables on the console, CSV files, "
        "report.txt, summary.json and PNG plots in <out>/mlmc_test/<run-id>/. Defaults: Giles' GBM call "
        "(black_scholes, "
        "S=K=100, T=1, r=0.05, sigma=0.2; other models have default parameters too). Theory for GBM: "
        "Euler alpha = 1, beta = 1; Milstein alpha = 1, beta = 2; gamma = 1.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
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
                       help="paths of the plain MC estimator in the MSE split, MSE = V/N + bias^2 "
                            "(default 100000)")
        p.add_argument("--exact-paths", type=_count(2), default=None,
                       help="paths per level of the MSE split's same-path coupling with the exact solution "
                            "(black_scholes; default "
                            "10 x --N)")
        p.add_argument("--alpha", type=_positive_float, default=None,
                       help="weak rate |E Y_l| ~ h^alpha for the complexity runs, the optimal-h MC cost and the "
                            "MSE split's h-vs-h/M bias estimate (default: fitted by the convergence test; 1 for the "
                            "estimate)")
        p.add_argument("--beta", type=_positive_float, default=None,
                       help="variance rate V[Y_l] ~ h^beta for the complexity runs (default: fitted)")
        p.add_argument("--gamma", type=_positive_float, default=None,
                       help="cost rate C_l ~ h^-gamma for the complexity runs and the optimal-h MC cost "
                            "(default: fitted)")
        p.add_argument("--refit", action="store_true",
                       help="let each MLMC run fit alpha, beta, gamma itself (default: use the convergence test's, "
                            "as Giles' mlmc_test does); rates given by --alpha/--beta/--gamma stay fixed")
        p.add_argument("--seed", type=_count(0), default=0, help="random seed (default 0)")
        p.add_argument("--out", default="results", metavar="DIR",
                       help="results root, as for `pricebench run`: writes <DIR>/mlmc_test/<run-id>/ "
                            "(default: ./results)")
        p.add_argument("--threads", type=_count(1), help="limit numba threads (default: all)")

    def run(self, args: argparse.Namespace, out: Any, err: Any) -> int:
        import bench
        from bench import environment
        from bench.plugins import get_registry
        from pricebench_plugins.pricers import _mlmc_driver

        def usage(message: str) -> int:
            err.print(f"[bold red]error:[/] mlmc-test: {message}", highlight=False)
            return EXIT_USAGE

        registry = get_registry()  # the CLI installs the registry it loaded (--plugins-dir included)
        try:
            mdl = registry.model(args.model)
        except (KeyError, ValueError) as exc:
            return usage(str(exc))
        product = args.product or ("zero_coupon_bond" if args.model == "black_karasinski" else "european_call")
        params = dict(DEFAULTS.get(args.model, {}))
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
        root = Path(args.out)
        if root.exists() and not root.is_dir():
            return usage(f"--out {root} is a file, not a folder")
        with environment.limit_threads(args.threads):
            try:
                mdl.check_product(product)
                cls = registry.get("pricer", "mlmc")
                pricer = cls(M=args.M, scheme=args.scheme, N0=args.N0, Lmin=args.Lmin, Lmax=args.Lmax,
                             seed=args.seed)
                level_fn = pricer.level_function(mdl, product, params)
                scheme = pricer.resolved_scheme(mdl.name)
            except (KeyError, ValueError) as exc:
                return usage(str(exc))
            exact, source = args.exact, "--exact"
            if exact is None and REFERENCE.get(mdl.name) in registry.names("pricer"):
                source = REFERENCE[mdl.name]
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
            result = _mlmc_driver.mlmc_test(
                level_fn, args.M, args.N, args.L, args.N0, eps, args.Lmin, args.Lmax, exact=exact,
                repeats=args.repeats, mse_paths=args.mse_paths, exact_paths=args.exact_paths, refit=args.refit,
                alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                weak_order=args.alpha if args.alpha is not None else 1.0, meta=meta,
                on_stage=lambda text: out.print(f"[dim]{text}[/]", highlight=False))
        render(result, out)
        out_dir = new_run_folder(root)
        write_report(result, out_dir)
        from rich.markup import escape

        from bench.report.files import folder_summary

        out.print(f"[green]wrote[/] {escape(str(out_dir))}/: {escape(folder_summary(out_dir))} (the test took "
                  f"{result.timings['total_s']:.1f} s)", highlight=False)
        return EXIT_OK
