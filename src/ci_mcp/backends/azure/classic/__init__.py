"""The `azure-classic` backend: Foundry classic agents (azure-ai-agents: agents, threads, messages, runs).

`backend.py` (the Backend protocol: sessions are threads, runs are streamed runs), `client.py` (the optional SDK
extra and the client), `calls.py` (SDK calls through the shared retry and error boundary), `files.py` (waiting for
an upload's processing), `stream.py` (following a run's events), `prompt.py` (the user message), `outputs.py` (text,
images and files from a finished run), `doctor.py` (`ci-mcp doctor`). See docs/classic-backend.md.
"""
