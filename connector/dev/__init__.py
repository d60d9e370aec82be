"""Dev: running the product on one machine. The embedded Redis (``embedded_redis``), the local
run's data directory and generated secrets (``devenv``), the sample account (``sample/``) and the
sandbox ESP fakes (``sandbox``) that tests and ``connector dev`` use.
"""
