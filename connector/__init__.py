"""Behavioral-segmentation connector: webhooks in, segments out."""
