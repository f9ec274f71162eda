"""Differential privacy for the federation: DP-SGD on clients (Opacus), central DP (Flower), accounting.

Importing this package installs the Opacus Conv2d grad-sampler fix (see ``grad_samplers``).
"""

from privacy import grad_samplers as _grad_samplers  # noqa: F401  (registers the fix)
