"""Load plugins and hold what they register.

Flow: entry points of the ``pricebench`` group (built-ins included), then
loose ``*.py`` modules from ``--plugins-dir``, then plugin objects passed in
code; ``check_pending`` so a misspelt hook fails loudly; then each plugin's
hooks are called with a host-owned ``register``. A plugin that fails to
import or raises in a hook is reported once and skipped, with nothing it
registered kept. Nothing happens at import time: the registry is built on
first use (:func:`get_registry`).
"""

from __future__ import annotations

import difflib
import re
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pluggy

from bench import atomic, hookspecs
from bench.commands import Command
from bench.kinds import TaskKind
from bench.methods import BASES as METHOD_BASES

ENV_VAR = "PRICEBENCH_PLUGINS"

# hook name -> kind of thing it registers; models and metrics first so that
# methods registered later can be checked against them
HOOKS = {
    "register_models": "model",
    "register_metrics": "metric",
    "register_pricers": "pricer",
    "register_root_finders": "root_finder",
    "register_approximators": "approximator",
    "register_task_kinds": "task_kind",
    "register_commands": "command",
}
KINDS = tuple(HOOKS.values())
# keyword arguments of bench.price / bench.implied_vol that a setting could not be passed through
RESERVED_SETTINGS = {"model", "product", "device", "price", "kind", "S", "K", "T", "r", "q"}


# what each kind of registered thing must subclass
BASES: dict[str, type] = {**METHOD_BASES, "task_kind": TaskKind, "command": Command}
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_-]*")


class PluginError(Exception):
    """A plugin set that cannot be used as a whole (a name clash, an unknown hook)."""


class PluginLoadWarning(UserWarning):
    """A plugin failed to load and was skipped; everything else loaded."""


class UnknownName(KeyError, ValueError):
    """A method, model or metric name nobody registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "entry point: <dist>", "file: <path>" or "object"
    registered: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Entry:
    cls: type
    plugin: str


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class PluginSource:
    """A serialisable description of a plugin set, from which another process or machine
    rebuilds the same registry: which entry points (``only``), the source text of the
    ``--plugins-dir`` modules, and in-memory plugin objects pickled by value (cloudpickle)."""

    only: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    objects: tuple[tuple[str, bytes | None, str], ...] = ()  # (name, pickled or None, why not)

    @classmethod
    def describe(cls, plugins_dir, extra, only) -> "PluginSource":
        files = ()
        if plugins_dir is not None and Path(plugins_dir).is_dir():
            files = tuple((p.name, p.read_text(encoding="utf-8", errors="replace"))
                          for p in sorted(Path(plugins_dir).glob("*.py")))
        objects = []
        for name, obj in extra:
            try:
                import cloudpickle

                objects.append((name, cloudpickle.dumps(obj), ""))
            except Exception as exc:  # noqa: BLE001 - only a worker process would need it
                objects.append((name, None, f"{type(exc).__name__}: {exc}"))
        return cls(os.environ.get(ENV_VAR) if only is None else only, files, tuple(objects))

    def check_portable(self) -> None:
        """Raise PluginError if some plugin cannot be rebuilt in another process."""
        for name, blob, why in self.objects:
            if blob is None:
                raise PluginError(f"plugin {name!r} cannot be sent to worker processes ({why}); install it as an "
                                  "entry point or load it with --plugins-dir")

    def load(self) -> "Registry":
        """Rebuild the registry this source describes (in a worker process)."""
        import pickle
        import tempfile

        self.check_portable()
        extra = [(name, pickle.loads(blob)) for name, blob, _ in self.objects]
        with tempfile.TemporaryDirectory(prefix="pricebench-plugins-") as tmp:  # modules live on in memory
            return self._load_from(tmp if self.files else None, extra)

    def _load_from(self, folder: str | None, extra) -> "Registry":
        if folder is not None:
            for filename, text in self.files:
                # a description may come from elsewhere: each name must stay one file in this folder
                if Path(filename).name != filename or filename in ("", ".", ".."):
                    raise PluginError(f"plugin file name {filename!r} is not a plain file name")
                atomic.write_text(Path(folder) / filename, text)
        saved = os.environ.pop(ENV_VAR, None)  # None means every entry point, whatever this process's environment
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PluginLoadWarning)  # the main process reported them already
                return load(plugins_dir=folder, extra=extra, only=self.only)
        finally:
            if saved is not None:
                os.environ[ENV_VAR] = saved


_FROM_SOURCE: dict[int, "Registry"] = {}


def registry_from(source: PluginSource) -> "Registry":
    """The registry of ``source``, built once per process (workers call this for every cell)."""
    key = hash(source)
    if key not in _FROM_SOURCE:
        _FROM_SOURCE[key] = source.load()
    return _FROM_SOURCE[key]


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.plugins: list[PluginInfo] = []
        self.source: PluginSource = PluginSource()

    # ------------------------------------------------------------------ lookup
    def get(self, kind: str, name: str) -> type:
        return self.entry(kind, name).cls

    def entry(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        if name not in table:
            label = kind.replace("_", " ")
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(table)) or "none registered"
            raise UnknownName(f"unknown {label} {name!r}{hint} (known: {known})")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def method_kind(self, name: str) -> str:
        """The kind of the method called ``name`` (pricer, root finder or approximator)."""
        for kind in ("pricer", "root_finder", "approximator"):
            if name in self.entries[kind]:
                return kind
        known = sorted(n for k in ("pricer", "root_finder", "approximator") for n in self.entries[k])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownName(f"unknown method {name!r}{hint} (known: {', '.join(known)})")

    def model(self, name: str):
        return self.get("model", name)()

    def task_kind(self, name: str):
        """The registered task kind called ``name`` (an instance)."""
        return self.get("task_kind", name)()

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if not p.ok]

    # ------------------------------------------------------------------ loading
    def _admit(self, info: PluginInfo, staged: list[tuple[str, type]]) -> None:
        seen = set()
        for kind, cls in staged:
            if (kind, cls.name) in seen:
                raise PluginError(f"plugin {info.name!r} registers {kind.replace('_', ' ')} {cls.name!r} twice")
            seen.add((kind, cls.name))
            taken = self.entries[kind].get(cls.name)
            if taken is not None:
                raise PluginError(
                    f"{kind.replace('_', ' ')} {cls.name!r} is registered by both plugin "
                    f"{taken.plugin!r} and plugin {info.name!r}; uninstall one, or limit which load "
                    f"with {ENV_VAR}"
                )
        for kind, cls in staged:
            self.entries[kind][cls.name] = Entry(cls, info.name)
            info.registered.append((kind, cls.name))


def _check_registered(kind: str, obj: Any) -> type:
    base = BASES[kind]
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise TypeError(f"register_{kind}s expects a subclass of {base.__name__}, got {obj!r}")
    name = getattr(obj, "name", "")
    if kind == "task_kind":
        _check_task_kind(obj)
    if kind == "command":
        if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name):
            raise TypeError(f"{obj.__name__}.name must be a command name (lower-case letters, digits, '-', '_'), "
                            f"got {name!r}")
        return obj
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{obj.__name__}.name must be an identifier-like string, got {name!r}")
    clash = sorted(set(getattr(obj, "settings", {})) & (set(dir(base)) | RESERVED_SETTINGS))
    if clash:
        raise TypeError(f"{obj.__name__}: setting name {clash[0]!r} shadows a method attribute or an argument "
                        "of bench.price / bench.implied_vol")
    return obj


def _check_task_kind(cls: type) -> None:
    from bench.kinds import TIMING_POLICIES
    from bench.suite import TASK_KEYS

    if cls.timing not in TIMING_POLICIES:
        raise TypeError(f"{cls.__name__}.timing must be one of {', '.join(TIMING_POLICIES)}, got {cls.timing!r}")
    unknown = [k for k in cls.method_kinds if k not in ("pricer", "root_finder", "approximator")]
    if not cls.method_kinds or unknown:
        raise TypeError(f"{cls.__name__}.method_kinds must name pricer, root_finder or approximator, "
                        f"got {cls.method_kinds!r}")
    taken = sorted(set(cls.keys) & set(TASK_KEYS))
    if taken:
        raise TypeError(f"{cls.__name__}.keys redefines the common task key {taken[0]!r}")


def _canonical(name: str) -> str:
    """PEP 503 normalisation: ``pricebench_example`` and ``pricebench-example`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _selected(names: str | None) -> dict[str, str] | None:
    """Canonical name -> name as written, from a comma-separated list."""
    if names is None:
        return None
    return {_canonical(n.strip()): n.strip() for n in names.split(",") if n.strip()}


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=hookspecs.PROJECT)


def _load_file(path: Path) -> Any:
    module_name = f"pricebench_local_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """What is wrong with the hooks ``plugin`` implements that no spec defines, each with the closest
    real hook ("did you mean"); None if it implements none."""
    found = []
    for caller_name, caller in sorted(vars(pm.hook).items()):
        if caller_name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        if any(impl.plugin is plugin for impl in caller.get_hookimpls()):
            close = difflib.get_close_matches(caller_name, list(HOOKS), n=1, cutoff=0.6)
            found.append(f"{caller_name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if not found:
        return None
    which = "is not a pricebench hook" if len(found) == 1 else "are not pricebench hooks"
    return f"implements {', '.join(found)}, which {which}"


def load(
    plugins_dir: str | os.PathLike | None = None,
    extra: Iterable[tuple[str, Any]] = (),
    only: str | None = None,
) -> Registry:
    """Build a registry from entry points, a plugins folder and extra plugin objects.

    ``only`` (default: the ``PRICEBENCH_PLUGINS`` environment variable)
    is a comma-separated list of entry-point names or distribution names to
    load; empty loads no entry-point plugin; unset loads all.
    """
    registry = Registry()
    registry.source = PluginSource.describe(plugins_dir, extra, only)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    selected = _selected(os.environ.get(ENV_VAR) if only is None else only)
    candidates: list[tuple[PluginInfo, Any]] = []

    matched: set[str] = set()
    for ep in sorted(_entry_points(), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist_name = ep.dist.name if ep.dist else "?"
        if selected is not None:
            hits = selected.keys() & {_canonical(ep.name), _canonical(dist_name)}
            if not hits:
                continue
            matched |= hits
        info = PluginInfo(ep.name, ep.dist.version if ep.dist else "?", f"entry point: {dist_name}")
        try:
            candidates.append((info, ep.load()))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not stop the others
            info.error = f"failed to import {ep.value}: {_describe(exc)}"
            registry.plugins.append(info)

    for name in sorted((selected or {}).keys() - matched):
        warnings.warn(f"{ENV_VAR} names {selected[name]!r}, which matches no installed entry point or distribution",
                      PluginLoadWarning, stacklevel=2)

    if plugins_dir is not None:
        folder = Path(plugins_dir)
        if not folder.is_dir():
            raise PluginError(f"--plugins-dir {folder}: not a directory")
        for path in sorted(folder.glob("*.py")):
            info = PluginInfo(path.stem, "-", f"file: {path}")
            try:
                module = _load_file(path)
                info.version = str(getattr(module, "__version__", "-"))
                candidates.append((info, module))
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                info.error = f"failed to import {path}: {_describe(exc)}"
                registry.plugins.append(info)

    for name, obj in extra:
        candidates.append((PluginInfo(name, str(getattr(obj, "__version__", "-")), "object"), obj))

    for info, obj in candidates:
        if pm.is_registered(obj) or pm.has_plugin(info.name):
            info.error = "a plugin of this name or object is already loaded"
            registry.plugins.append(info)
            continue
        try:
            pm.register(obj, name=info.name)
        except pluggy.PluginValidationError as exc:
            info.error = f"invalid hook implementation: {exc}"
            registry.plugins.append(info)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin {name!r} {_unknown_hooks(pm, exc.plugin) or f'fails validation: {exc}'} "
                          f"(hooks: {', '.join(HOOKS)}; see bench/hookspecs.py)") from None

    for info, obj in candidates:
        if info.error is not None:
            continue
        staged: list[tuple[str, type]] = []
        try:
            for hook_name, kind in HOOKS.items():
                impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is obj]

                def register(cls, _kind=kind):
                    staged.append((_kind, _check_registered(_kind, cls)))

                for impl in impls:
                    wants = ("register" in impl.argnames) or ("register" in impl.kwargnames)
                    impl.function(**({"register": register} if wants else {}))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - report once, keep the others
            info.error = (f"called sys.exit({exc.code!r}) in a hook" if isinstance(exc, SystemExit)
                          else f"{type(exc).__name__} in a hook: {exc}")
            pm.unregister(obj)
        else:
            registry._admit(info, staged)
        registry.plugins.append(info)

    for info in registry.errors:
        warnings.warn(f"pricebench plugin {info.name!r} skipped: {info.error}", PluginLoadWarning, stacklevel=2)
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load()
    return _REGISTRY


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (``None`` reloads on next use); returns the old one."""
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, registry
    return old
