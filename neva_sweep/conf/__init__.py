"""neva_sweep's Hydra configs (YAML package data): ``config.yaml`` and its groups.

A package (not a plain folder) so Hydra's ``pkg://neva_sweep.conf`` search path and
``importlib.resources`` find the files in a wheel as in a checkout.
"""
