"""Ingest: what arrives. The receiving routes in front of Flask (``web``), one receiver per
sender on a base class that verifies before it parses (``receivers``), the Segment-compatible
tracking API (``tracking``), event-name mapping (``names``) and the durable hand-off to the workers
(``queue``: dedupe and append to a stream shard, in one Lua script, before the 2xx).
"""
