"""Differential privacy for the federation: DP-SGD on clients (Opacus), central DP (Flower), accounting.

:mod:`privacy.modes` (torch-free) defines the DP modes and grad-sample modes; importing the package
imports nothing heavy. The Opacus Conv2d grad-sampler fix (:mod:`privacy.grad_samplers`) is
installed by the modules that build DP-SGD steps (:mod:`privacy.dpsgd`, :mod:`privacy.mixed_ghost`).
"""
