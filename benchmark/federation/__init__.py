"""Flower apps for federated DDPM training.

``task.py`` holds the model/data/train glue, ``client_app.py`` and ``server_app.py`` the two
Flower apps (Message API), ``simulation.py`` runs them in Flower's simulation engine. The same two
apps run unchanged under Flower's deployment engine (``flwr run`` against a SuperLink, one
SuperNode per party): everything a client needs arrives in the server's messages, and everything
node-local (its partition, its data folder) comes from the node config.
"""
