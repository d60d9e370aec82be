"""Worker: what happens to stored events. Drain jobs consume the stream shards (``jobs``), apply
each batch to the profiles (``pipeline``), evaluate the account's rules for every touched profile
(``evaluation``), record memberships with a version (``ledger``), keep each profile's next instant
in the due index (``due``) that the scheduler fires (``scheduler``), and re-evaluate everyone after a
rules change (``publish``).
"""
