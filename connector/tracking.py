"""Segment-compatible HTTP tracking API (``/v1/track`` ...)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("tracking", __name__)
