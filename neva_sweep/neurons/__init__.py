"""Neurons: statistics over the probes, value scores and selection, relevance gates, stance pairs
and attribution."""
