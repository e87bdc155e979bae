"""Read and validate a suite: a TOML file of benchmark tasks.

Everything is checked before anything runs: unknown keys, models, methods
and settings, wrong types, bad ranges. The first problem raises one
:class:`SuiteError` naming the file, the task and the key. See README.md,
"Writing a suite", for the format; ``suites/quick.toml`` is an example.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bench import sampling
from bench.methods import DEVICES, PRODUCTS, Setting, SettingError
from bench.plugins import Registry, UnknownName

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MAX_NAME = 100  # a task or suite name names files and folders
# the most points one task may have: its arrays (a dozen float64 columns) must fit in memory
MAX_POINTS = 10_000_000
MAX_SUITE_BYTES = 1_000_000

SUITE_KEYS = {
    "name": str,
    "description": str,
    "runtime": str,
    "seed": int,
    "threads": int,
    "repeats": int,
    "timeout": float,
    "devices": list,
    "tasks": list,
}
# the keys every task has, whatever its kind; a kind adds its own (TaskKind.keys)
TASK_KEYS = {
    "name": str,
    "description": str,
    "kind": str,
    "model": str,
    "product": str,
    "n": int,
    "sampler": (str, dict),
    "seed": int,
    "fixed": dict,
    "domain": dict,
    "baseline": (str, dict),
    "methods": list,
    "devices": list,
    "repeats": int,
    "timeout": float,
    "floor": float,
    "min_time": float,
}
METHOD_KEYS = {"name": str, "settings": dict, "devices": list, "label": str}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
               dict: "a table"}


def check_requirements(cls: type, settings: Mapping[str, Any], earlier: Mapping[str, Any], model: str,
                       product: str) -> None:
    """``cls.check_requirements``, with the task's model and product where its signature takes them (a plugin
    written before they were passed overrides it with ``(settings, tasks)``)."""
    params = inspect.signature(cls.check_requirements).parameters
    if "model" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        cls.check_requirements(settings, earlier, model=model, product=product)
    else:
        cls.check_requirements(settings, earlier)


class SuiteError(ValueError):
    """A malformed suite: names the file, the task and the key at fault."""

    def __init__(self, path: str | Path, message: str, task: str | None = None, key: str | None = None):
        self.path, self.task, self.key = str(path), task, key
        where = [self.path]
        if task is not None:
            where.append(f"task {task!r}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{': '.join(where)}: {message}")


@dataclass(frozen=True)
class MethodSpec:
    """One concrete configuration of a method: a leaderboard row per device."""

    name: str
    kind: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ("cpu",)
    label: str = ""

    @property
    def settings_label(self) -> str:
        return self.label or ", ".join(f"{k}={v}" for k, v in self.settings.items())


@dataclass
class Task:
    name: str
    kind: str
    model: str
    product: str
    n: int
    sampler: str
    sampler_options: dict[str, Any]
    seed: int | None
    fixed: dict[str, float]
    domain: dict[str, tuple[float, float]]
    options: dict[str, Any]  # the kind's own keys, as its TaskKind.parse returned them
    baseline: str | None
    methods: list[MethodSpec]
    devices: tuple[str, ...]
    repeats: int
    timeout: float
    floor: float
    min_time: float
    description: str = ""
    baseline_settings: dict[str, Any] | None = None  # None: the baseline method's first configuration

    @property
    def size(self) -> int:
        return sampling.points(self.sampler, self.n, len(self.domain))

    @property
    def reference(self) -> MethodSpec | None:
        """The method that makes the reference, where the kind has one."""
        return self.options.get("reference")

    def definition(self) -> dict[str, Any]:
        """Everything that determines the task's data and scores (not its timing knobs), as plain
        JSON-able values: what :func:`bench.cells.cell_key` hashes with the data seed."""
        def plain(value):
            if isinstance(value, MethodSpec):
                return {"name": value.name, "settings": dict(value.settings)}
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {
            "kind": self.kind, "model": self.model, "product": self.product, "n": self.n,
            "sampler": self.sampler, "sampler_options": plain(self.sampler_options), "fixed": plain(self.fixed),
            "domain": plain(self.domain), "options": plain(self.options), "floor": self.floor,
        }


@dataclass
class Suite:
    name: str
    path: str
    description: str
    seed: int
    threads: int | None
    tasks: list[Task]
    runtime: str = ""  # measured wall time of the whole suite and where, e.g. "20 s (2-core AMD EPYC)"


# a suite's optional ``runtime``: a measured duration (a number or a range, and a unit), then in
# parentheses the machine it was measured on: "20 s (2-core AMD EPYC)", "about 25 min (2-core AMD EPYC)"
RUNTIME = re.compile(r"(?P<time>(?:about |under )?\d+(?:\.\d+)?(?:\s*(?:-|to)\s*\d+(?:\.\d+)?)?\s?(?:s|min|h))"
                     r" \((?P<where>(?=\S)[^()]*[^()\s])\)")


def runtime_parts(runtime: str) -> tuple[str, str]:
    """A suite's ``runtime`` as (duration, machine): ("20 s", "2-core AMD EPYC"); ("", "") if unset."""
    match = RUNTIME.fullmatch(runtime)
    return (match["time"], match["where"]) if match else ("", "")


def default_suite_path() -> Path:
    return Path(str(resources.files("pricebench_suites").joinpath("quick.toml")))


def resolve_path(name: str | Path) -> Path:
    """A suite file: a path, or the name of a shipped suite (``quick``, ``iv_rootfinders``)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = resources.files("pricebench_suites").joinpath(f"{Path(str(name)).stem}.toml")
    if str(name) == path.stem and shipped.is_file():
        return Path(str(shipped))
    if str(name) != path.stem:  # a path (a folder or a suffix in it): a missing file
        raise SuiteError(name, "no such suite file")
    shipped_names = shipped_suites()
    close = difflib.get_close_matches(str(name), shipped_names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise SuiteError(name, f"no shipped suite of that name and no such file; {hint}(shipped suites: "
                     f"{', '.join(shipped_names)}; `pricebench suites` describes them)")


def shipped_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("pricebench_suites").iterdir() if p.name.endswith(".toml"))


def load(path: str | Path, registry: Registry) -> Suite:
    path = resolve_path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(path, f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_SUITE_BYTES:
        raise SuiteError(path, f"{len(raw):,} bytes: a suite is a small text file (at most {MAX_SUITE_BYTES:,})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(path, f"not a UTF-8 text file (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    if "\x00" in text:
        raise SuiteError(path, "not a text file (it contains NUL bytes)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(path, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise SuiteError(path, "not valid TOML here: arrays or tables nested too deeply") from None
    try:
        return parse(data, path, registry)
    except RecursionError:
        raise SuiteError(path, "values nested too deeply") from None


def _check_keys(data: Mapping[str, Any], allowed: Mapping[str, Any], path, task, prefix="") -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in allowed:
            raise SuiteError(path, f"unknown key (allowed: {', '.join(allowed)})", task, full)
        want = allowed[key]
        wants = want if isinstance(want, tuple) else (want,)
        ok = any(
            isinstance(value, w) and not (w in (int, float) and isinstance(value, bool))
            or (w is float and isinstance(value, int) and not isinstance(value, bool))
            for w in wants
        )
        if not ok:
            names = " or ".join(_TYPE_NAMES[w] for w in wants)
            raise SuiteError(path, f"must be {names}, got {value!r}", task, full)


def _devices(value, path, task, key) -> tuple[str, ...]:
    for d in value:
        if d not in DEVICES:
            raise SuiteError(path, f"unknown device {d!r} (devices: {', '.join(DEVICES)})", task, key)
    if not value:
        raise SuiteError(path, "must name at least one device", task, key)
    return tuple(dict.fromkeys(value))


def _expand_settings(cls: type, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A list value sweeps a setting; several sweeps combine as a Cartesian product."""
    axes = []
    for key, value in settings.items():
        spec: Setting | None = cls.settings.get(key)
        is_list_setting = spec is not None and spec.type in (list, tuple)
        sweep = isinstance(value, list) and (not is_list_setting or (value and isinstance(value[0], list)))
        if sweep and not value:
            raise SettingError("an empty list sweeps no value: give at least one", key)
        axes.append([(key, v) for v in value] if sweep else [(key, value)])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _method_specs(entry, registry, path, task, key, default_devices, kinds) -> list[MethodSpec]:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise SuiteError(path, f"must be a method name or a table, got {entry!r}", task, key)
    _check_keys(entry, METHOD_KEYS, path, task, prefix=f"{key}.")
    if "name" not in entry:
        raise SuiteError(path, "missing the method name", task, f"{key}.name")
    name = entry["name"]
    kind = next((k for k in kinds if name in registry.entries[k]), None)
    if kind is None:
        try:
            kind = registry.method_kind(name)
        except UnknownName as exc:
            raise SuiteError(path, str(exc), task, f"{key}.name") from None
    if kind not in kinds:
        raise SuiteError(path, f"{name!r} is a {kind.replace('_', ' ')}; this key needs a "
                         f"{' or '.join(k.replace('_', ' ') for k in kinds)}", task, f"{key}.name")
    cls = registry.get(kind, name)
    devices = _devices(entry["devices"], path, task, f"{key}.devices") if "devices" in entry else default_devices
    specs = []
    try:
        combos = _expand_settings(cls, entry.get("settings", {}))
    except SettingError as exc:
        raise SuiteError(path, str(exc), task, f"{key}.settings.{exc.setting}") from None
    for combo in combos:
        try:
            checked = cls.resolve_settings(combo)
            cls(**combo)  # __init__ only validates: cross-setting checks (a bracket's ends, say)
        except SettingError as exc:
            raise SuiteError(path, str(exc), task, f"{key}.settings.{exc.setting}") from None
        except ValueError as exc:
            raise SuiteError(path, str(exc), task, f"{key}.settings") from None
        given = {k: checked[k] for k in combo}
        specs.append(MethodSpec(name, kind, given, devices, entry.get("label", "")))
    return specs


def _single(specs: list[MethodSpec], path, task, key) -> MethodSpec:
    if len(specs) != 1:
        raise SuiteError(path, "takes one configuration; a list of setting values sweeps only candidates", task,
                         f"{key}.settings")
    return specs[0]


def parse(data: Mapping[str, Any], path: str | Path, registry: Registry) -> Suite:
    path = str(path)
    _check_keys(data, SUITE_KEYS, path, None)
    tasks_data = data.get("tasks")
    if not tasks_data:
        raise SuiteError(path, "a suite needs at least one [[tasks]] table", None, "tasks")
    seed = data.get("seed", 0)
    if seed < 0:
        raise SuiteError(path, "must be >= 0", None, "seed")
    name = data.get("name", Path(path).stem)
    _check_name(name, path, None, "name")
    for key, ok, need in (("repeats", lambda v: v >= 1, ">= 1"), ("timeout", lambda v: v > 0, "> 0 seconds")):
        if key in data and not ok(data[key]):
            raise SuiteError(path, f"must be {need}", None, key)
    defaults = {
        "repeats": data.get("repeats", 5),
        "timeout": float(data.get("timeout", 120.0)),
        "devices": _devices(data["devices"], path, None, "devices") if "devices" in data else ("cpu",),
    }
    threads = data.get("threads")
    if threads is not None and threads < 1:
        raise SuiteError(path, "must be >= 1", None, "threads")
    tasks, seen = [], set()
    for i, td in enumerate(tasks_data):
        if not isinstance(td, dict):
            raise SuiteError(path, "each entry of tasks must be a table", None, f"tasks[{i}]")
        task = _parse_task(td, i, path, registry, defaults, {t.name: t for t in tasks})
        if task.name in seen:
            raise SuiteError(path, "two tasks have this name", task.name, "name")
        seen.add(task.name)
        tasks.append(task)
    runtime = data.get("runtime", "")
    if "runtime" in data and not RUNTIME.fullmatch(runtime):
        raise SuiteError(path, f"got {runtime!r}; must read like \"20 s (2-core AMD EPYC)\": the measured wall time "
                         "of the whole suite (a number or a range, then s, min or h; 'about' or 'under' may "
                         "lead) and, in parentheses, the machine it was measured on", None, "runtime")
    return Suite(name, path, data.get("description", ""), seed, threads, tasks, runtime)


@dataclass
class ParseContext:
    """What a task kind's ``parse`` sees of the task being read, with helpers that raise
    :class:`SuiteError` naming the file, the task and the key."""

    path: str
    task: str
    registry: Registry
    model: Any  # the model instance
    product: str
    fixed: dict[str, float]
    domain: dict[str, tuple[float, float]]
    devices: tuple[str, ...]
    earlier: dict[str, "Task"] = field(default_factory=dict)  # the tasks before this one, by name
    options: dict[str, Any] = field(default_factory=dict)  # what the kind's parse returned (for check_method)

    def error(self, message: str, key: str | None = None) -> SuiteError:
        return SuiteError(self.path, message, self.task, key)

    def method_specs(self, entry: Any, key: str, kinds: tuple[str, ...],
                     devices: tuple[str, ...] | None = None) -> list[MethodSpec]:
        """Every configuration of a method entry (a name or a table; lists of setting values sweep)."""
        return _method_specs(entry, self.registry, self.path, self.task, key, devices or self.devices, kinds)

    def single(self, entry: Any, key: str, kinds: tuple[str, ...]) -> MethodSpec:
        """One configuration (a reference, a pricer): sweeps are refused."""
        return _single(self.method_specs(entry, key, kinds, ("cpu",)), self.path, self.task, key)

    def pricer_for_task(self, entry: Any, key: str) -> MethodSpec:
        """One pricer configuration that prices this task's model and product."""
        spec = self.single(entry, key, ("pricer",))
        self.check_pricer(spec, key)
        try:
            check_requirements(self.registry.get("pricer", spec.name), spec.settings, self.earlier, self.model.name,
                               self.product)
        except SettingError as exc:
            raise self.error(str(exc), f"{key}.settings.{exc.setting}") from None
        return spec

    def check_pricer(self, spec: MethodSpec, key: str) -> None:
        cls = self.registry.get("pricer", spec.name)
        if not cls.can_price(self.model.name, self.product):
            raise self.error(f"pricer {spec.name!r} does not price {self.product!r} under {self.model.name!r}", key)
        try:
            cls(**spec.settings).check_task(self.model.name, self.product)
        except SettingError as exc:
            raise self.error(str(exc), f"{key}.settings.{exc.setting}") from None


def _check_name(value: Any, path: str, task: str | None, key: str) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or len(value) > MAX_NAME:
        raise SuiteError(path, f"must be 1 to {MAX_NAME} letters, digits, '_', '-' and '.', not starting with "
                         "'.' or '-' (it names a results folder and files)", task, key)


def _parse_task(td: Mapping[str, Any], index: int, path: str, registry: Registry, defaults,
                earlier: Mapping[str, "Task"] | None = None) -> Task:
    label = td.get("name") if isinstance(td.get("name"), str) else f"tasks[{index}]"
    label = label if len(label) <= MAX_NAME else label[:MAX_NAME] + "..."
    if "kind" not in td:
        raise SuiteError(path, "required key is missing", label, "kind")
    if not isinstance(td["kind"], str):
        raise SuiteError(path, f"must be a string, got {td['kind']!r}", label, "kind")
    kind_name = td["kind"]
    try:
        kind = registry.task_kind(kind_name)
    except UnknownName as exc:
        hint = "" if registry.names("task_kind") else (
            "; the built-in kinds come from the plugin 'kinds': does PRICEBENCH_PLUGINS leave it out?")
        raise SuiteError(path, str(exc) + hint, label, "kind") from None
    _check_keys(td, TASK_KEYS | dict(kind.keys), path, label)
    for key in ("name", "model", "product", "n", "methods"):
        if key not in td:
            raise SuiteError(path, "required key is missing", label, key)
    _check_name(td["name"], path, label, "name")
    try:
        model = registry.model(td["model"])
    except UnknownName as exc:
        raise SuiteError(path, str(exc), label, "model") from None
    product = td["product"]
    if product not in PRODUCTS:
        raise SuiteError(path, f"unknown product {product!r} (products: {', '.join(PRODUCTS)})", label, "product")
    try:
        model.check_product(product)
    except ValueError as exc:
        raise SuiteError(path, str(exc), label, "product") from None
    n = td["n"]
    if n < 1:
        raise SuiteError(path, "must be >= 1", label, "n")
    if td.get("seed", 0) < 0:
        raise SuiteError(path, "must be >= 0", label, "seed")

    # sampler
    sampler_value = td.get("sampler", "lhs")
    sampler_options = {}
    if isinstance(sampler_value, dict):
        sampler_options = dict(sampler_value)
        sampler_value = sampler_options.pop("name", None)
        if not isinstance(sampler_value, str):
            raise SuiteError(path, "a sampler table needs name = \"...\"", label, "sampler.name")
    if sampler_value not in sampling.SAMPLERS:
        raise SuiteError(path, f"unknown sampler {sampler_value!r} (samplers: {', '.join(sampling.SAMPLERS)})",
                         label, "sampler")
    allowed = sampling.SAMPLER_OPTIONS[sampler_value]
    for key, value in sampler_options.items():
        if key not in allowed:
            raise SuiteError(path, f"unknown option of sampler {sampler_value!r} (options: "
                             f"{', '.join(allowed) or 'none'})", label, f"sampler.{key}")
        if not isinstance(value, allowed[key]):
            raise SuiteError(path, f"must be {_TYPE_NAMES.get(allowed[key], allowed[key].__name__)}", label,
                             f"sampler.{key}")
        choices = sampling.SAMPLER_CHOICES.get((sampler_value, key))
        if choices is not None and value not in choices:
            raise SuiteError(path, f"unknown value {value!r} (choices: {', '.join(choices)})", label,
                             f"sampler.{key}")

    # parameters: fixed values and ranges, each checked against the model
    fixed, domain = {}, {}
    for key, value in td.get("fixed", {}).items():
        if key not in model.params:
            raise SuiteError(path, f"model {model.name!r} has no parameter {key!r} "
                             f"(parameters: {', '.join(model.params)})", label, f"fixed.{key}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SuiteError(path, f"must be a number, got {value!r}", label, f"fixed.{key}")
        fixed[key] = float(value)
    for key, value in td.get("domain", {}).items():
        full = f"domain.{key}"
        if key not in model.params:
            raise SuiteError(path, f"model {model.name!r} has no parameter {key!r} "
                             f"(parameters: {', '.join(model.params)})", label, full)
        if key in fixed:
            raise SuiteError(path, "parameter is both fixed and ranged", label, full)
        if (not isinstance(value, list) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
            raise SuiteError(path, f"must be a range [low, high] of two numbers, got {value!r}", label, full)
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise SuiteError(path, f"bad range [{lo:g}, {hi:g}]: need finite low < high", label, full)
        domain[key] = (lo, hi)
    for key, spec in model.params.items():
        if key not in fixed and key not in domain and spec.default is None:
            raise SuiteError(path, f"parameter {key!r} of model {model.name!r} is neither fixed nor in the domain",
                             label, "domain")
        for where, vals in (("fixed", [fixed.get(key)]), ("domain", list(domain.get(key, ())))):
            vals = [v for v in vals if v is not None]
            if vals and not np.all(spec.admits(np.asarray(vals))):
                raise SuiteError(path, f"values {vals} leave the model's range {spec.describe()} for {key!r}",
                                 label, f"{where}.{key}")
    size = sampling.points(sampler_value, n, len(domain))
    if size > MAX_POINTS:
        what = f"n = {n}" if size == n else f"a grid of {n}^{len(domain)} = {size:.3g} points"
        raise SuiteError(path, f"{what} is more than the {MAX_POINTS:,} points a task may have", label, "n")

    devices = _devices(td["devices"], path, label, "devices") if "devices" in td else defaults["devices"]
    ctx = ParseContext(path, label, registry, model, product, fixed, domain, devices, dict(earlier or {}))
    options = kind.parse(td, ctx)
    ctx.options = dict(options)
    methods: list[MethodSpec] = []
    if not isinstance(td["methods"], list) or not td["methods"]:
        raise SuiteError(path, "must list at least one method", label, "methods")
    seen_configs: dict[tuple, int] = {}
    for j, entry in enumerate(td["methods"]):
        specs = ctx.method_specs(entry, f"methods[{j}]", kind.method_kinds)
        for spec in specs:
            cls = registry.get(spec.kind, spec.name)
            kind.check_method(spec, cls, ctx, f"methods[{j}]")
            try:
                check_requirements(cls, spec.settings, ctx.earlier, model.name, product)
            except SettingError as exc:
                raise ctx.error(str(exc), f"methods[{j}].settings.{exc.setting}") from None
            config = (spec.name, json.dumps(cls.resolve_settings(spec.settings), sort_keys=True, default=str))
            for device in spec.devices:
                if (config, device) in seen_configs:
                    raise SuiteError(path, f"{spec.name} with settings {dict(spec.settings)} on {device} is "
                                     f"already methods[{seen_configs[(config, device)]}]: the same experiment twice",
                                     label, f"methods[{j}]")
                seen_configs[(config, device)] = j
        methods.extend(specs)

    baseline, baseline_settings = td.get("baseline"), None
    if isinstance(baseline, dict):
        spec = _single(ctx.method_specs(baseline, "baseline", kind.method_kinds), path, label, "baseline")
        baseline, baseline_settings = spec.name, dict(spec.settings)
        if not any(m.name == baseline and dict(m.settings) == baseline_settings for m in methods):
            raise SuiteError(path, f"baseline {baseline!r} with settings {baseline_settings} is not among the "
                             "task's method configurations", label, "baseline")
    if baseline is not None and baseline not in {m.name for m in methods}:
        raise SuiteError(path, f"baseline {baseline!r} must be one of the task's methods", label, "baseline")

    repeats = td.get("repeats", defaults["repeats"])
    if repeats < 1:
        raise SuiteError(path, "must be >= 1", label, "repeats")
    timeout = float(td.get("timeout", defaults["timeout"]))
    if not timeout > 0:  # also NaN
        raise SuiteError(path, "must be > 0 seconds", label, "timeout")
    floor = float(td.get("floor", 1e-8))
    if not floor >= 0:
        raise SuiteError(path, "must be >= 0", label, "floor")
    min_time = float(td.get("min_time", 0.01))
    if not 0 <= min_time < math.inf:
        raise SuiteError(path, "must be >= 0 seconds", label, "min_time")
    return Task(
        name=td["name"], kind=kind_name, model=model.name, product=product, n=n, sampler=sampler_value,
        sampler_options=sampler_options, seed=td.get("seed"), fixed=fixed, domain=domain, options=options,
        baseline=baseline, baseline_settings=baseline_settings, methods=methods, devices=devices,
        repeats=repeats, timeout=timeout, floor=floor, min_time=min_time, description=td.get("description", ""),
    )
