"""The embedded default backend: one sandboxed Jupyter kernel per session on this machine."""
