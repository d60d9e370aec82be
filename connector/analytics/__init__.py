"""Segment analytics: what the segments do, read from counters kept as memberships change and as
engagement arrives, never from a scan of the profiles. ``movement`` keeps the migration counters of
the exclusive groups (lifecycle stages, engagement tiers) and reads sizes, entries and exits over
time (kept by :mod:`connector.worker.sizes`); ``overlap`` counts the people two segments share in a
background job; ``holdout`` assigns members to a control group or an A/B variant by a
deterministic hash; ``attribution`` credits deliveries, opens, clicks, unsubscribes (to the
segments the person was in when the message was delivered) and orders (to the segments entered
within the account's conversion window before the order); ``stats`` compares treated and control
(or variants) with confidence intervals; ``report`` assembles what the CLI
(``connector segments report``) and the admin API show. See docs/analytics.md.
"""
