"""Built-in approximators: learned pricing functions (task kind ``approximate``).

- ``mlp``: a multilayer perceptron in torch, optionally with differential training;
- ``gp``: a Gaussian process in gpytorch (exact, or variational with inducing points);
- ``least_squares``: polynomial or Chebyshev ridge regression (scikit-learn);
- ``smt``: the Surrogate Modeling Toolbox's KRG, RBF, LS and QP behind one adapter.
"""
