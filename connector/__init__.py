"""Behavioral-segmentation connector: webhooks in, segments out."""

from rules import compiled

compiled.activate()  # before any module it may load compiled (rules/compiled.py)
