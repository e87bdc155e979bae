"""pricebench: benchmark derivative-pricing methods against each other.

Scripts and notebooks use three functions::

    import bench
    bench.price("closed_form", model="black_scholes", product="european_call",
                S=100, K=[90, 100, 110], T=1, r=0.05, sigma=0.2)
    res = bench.implied_vol("newton", price=10.45, S=100, K=100, T=1, r=0.05)
    res.sigma, res.converged, res.iterations
    bench.methods()            # registered methods and their kinds
    f = bench.load_approximator("results/.../mlp.cpu.pbapprox")   # a fitted approximator
    bench.price(f, model="black_scholes", product="european_call", S=1, K=1, T=0.5, sigma=0.2)

Plugins implement the hooks in :mod:`bench.hookspecs` with ``bench.hookimpl``.
"""

from bench.hookspecs import hookimpl
from bench.api import implied_vol, methods, price
from bench.approximators import load_approximator, save_approximator

__version__ = "0.1.0"
__all__ = ["hookimpl", "price", "implied_vol", "methods", "load_approximator", "save_approximator", "__version__"]
