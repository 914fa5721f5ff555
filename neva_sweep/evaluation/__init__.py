"""Evaluation: batched scoring of edited models, judges, capability, metrics, judge validity and
held-out statistics."""
