"""The built-in task kinds, registered like any plugin's (hook ``register_task_kinds``).

- ``price``: price a batch of options and score against a reference pricer;
- ``implied_vol``: invert Black-Scholes prices and score against the true
  volatility (or a reference root finder);
- ``approximate``: fit learned pricing functions to a labelling pricer and
  score them on wide and narrow test sets.
"""

from bench import hookimpl

from pricebench_plugins.kinds.approximate import ApproximateKind
from pricebench_plugins.kinds.implied_vol import ImpliedVolKind
from pricebench_plugins.kinds.price import PriceKind


@hookimpl
def register_task_kinds(register):
    register(PriceKind)
    register(ImpliedVolKind)
    register(ApproximateKind)
