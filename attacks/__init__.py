"""Attacks on the federated DDPM: membership inference, gradient inversion, empirical audit."""
