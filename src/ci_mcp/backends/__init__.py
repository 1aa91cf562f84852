"""Backends run the analyses. `base.Backend` is the protocol; `create_backend` picks one from settings."""
