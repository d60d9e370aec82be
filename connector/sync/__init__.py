"""Sync: desired state per contact to the ESPs. Changes are submitted per destination, coalesced,
flushed in batches through the adapters under the shared rate limits, retried, and parked in dead
letters (``deadletters``) when permanent or exhausted; destinations can be paused and resumed.
"""
