"""The plugin contract: every hook pricebench calls, in one module.

A plugin is any module or object with functions decorated by
``bench.hookimpl`` whose names match the specifications below. Each hook
receives ``register``, a callable owned by pricebench; a plugin calls it
once per thing it adds::

    from bench import hookimpl

    @hookimpl
    def register_pricers(register):
        register(MyPricer)

An implementation may omit the ``register`` argument it does not use (pluggy
passes only the arguments an implementation names), so hooks can grow new
arguments without breaking plugins. A misspelt hook name, such as
``register_pricer``, is an error when plugins load (``check_pending``).

Registration is all-or-nothing per plugin: if any of a plugin's hooks raises,
nothing it registered is kept and the error is reported once with the
plugin's name. Names are unique per kind; a second plugin registering a name
that is taken is an error naming both plugins.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "pricebench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[type], None]


@hookspec
def register_models(register: Register) -> None:
    """Register models: subclasses of :class:`bench.methods.Model`.

    A model names its parameters (with bounds and defaults), the products it
    defines and, where it has one, its characteristic function. Model names
    are the canonical ones (``black_scholes``, ``heston``, ...).
    """


@hookspec
def register_pricers(register: Register) -> None:
    """Register pricers: subclasses of :class:`bench.methods.Pricer`.

    A pricer prices a batch of options of one (model, product) pair it
    declares in ``Pricer.supports``.
    """


@hookspec
def register_root_finders(register: Register) -> None:
    """Register implied-volatility root finders: subclasses of
    :class:`bench.methods.RootFinder`."""


@hookspec
def register_approximators(register: Register) -> None:
    """Register approximators (learned pricing functions): subclasses of
    :class:`bench.methods.Approximator`."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register accuracy metrics: subclasses of :class:`bench.methods.Metric`.

    Every registered metric is computed for every leaderboard cell and
    becomes a column of the CSV leaderboard.
    """


@hookspec
def register_task_kinds(register: Register) -> None:
    """Register task kinds: subclasses of :class:`bench.kinds.TaskKind`.

    A task kind is what a suite's ``kind = "..."`` names. It owns everything
    that differs between kinds, so the runner and the suite reader contain no
    ``if kind == ...``:

    - ``keys``: the suite keys it adds to the common ones (``name``,
      ``model``, ``product``, ``n``, ``domain``, ``methods``, ...), and
      :meth:`~bench.kinds.TaskKind.parse` validates them (raising
      :class:`bench.suite.SuiteError` naming the key) into picklable options;
    - ``method_kinds``: which kinds of method its candidates are;
    - :meth:`~bench.kinds.TaskKind.build`: the task data every cell shares
      (sampled points, inputs, reference), computed once per task;
    - ``timing``: ``"repeat"`` (untimed prepare, discarded first call,
      calibrated loops, median and IQR) or ``"once"`` (a long step such as a
      fit, timed once and reported apart), and
      :meth:`~bench.kinds.TaskKind.prepare` which returns the call to time;
    - :meth:`~bench.kinds.TaskKind.score`: the accuracy columns of a cell.

    The built-in kinds ``price`` and ``implied_vol`` are registered this way
    (``pricebench_plugins.kinds``).
    """


@hookspec
def register_commands(register: Register) -> None:
    """Register ``pricebench`` sub-commands: subclasses of :class:`bench.commands.Command`.

    A command has a ``name`` (what follows ``pricebench``), a ``help`` line,
    ``add_arguments(parser)`` for its argparse options and ``run(args, out,
    err)`` returning the exit code. A method's own report (``mlmc-test``,
    registered by the plugin that owns the ``mlmc`` pricer) lives with the
    method this way instead of in ``bench/cli.py``. A command name that
    clashes with a built-in command is an error naming the plugin.
    """
