"""The ``connector`` command. ``main`` builds the click group; each ``*_cmd`` module adds one command
group with ``register(cli)``."""
