"""feddp-bench: a privacy benchmark for federated diffusion models."""
