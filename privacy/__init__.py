"""Differential privacy for the federation: DP-SGD on clients (Opacus), central DP (Flower), accounting."""
