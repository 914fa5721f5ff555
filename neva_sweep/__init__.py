"""neva_sweep: neuron-level value alignment (NeVA) as a research instrument."""
__version__ = "0.1.0"
