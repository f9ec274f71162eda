"""Differential privacy for the federation: DP-SGD on clients (Opacus), central DP (Flower), accounting.

:mod:`privacy.mechanisms` (torch-free) holds the DP mechanisms, one object per ``dp_mode``, and
:mod:`privacy.modes` the grad-sample modes; importing the package imports nothing heavy. The Opacus Conv2d grad-sampler fix (:mod:`privacy.grad_samplers`) is
installed by :func:`privacy.dpsgd.make_dp_step`, the one door to a DP-SGD step.
"""
