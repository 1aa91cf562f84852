"""The `azure` backend: Foundry new agents (azure-ai-projects 2.x and its OpenAI client).

`backend.py` (the Backend protocol: sessions are conversations, runs are streamed responses), `versions.py` (one
agent version per file count, reused), `clients.py` (the SDK clients), `stream.py` (one response's events, deadline
and cancellation), `wire.py` (response shapes to plain values, the prompt), `outputs.py` (result items and the
container's generated files), `doctor.py` (`ci-mcp doctor`).
"""
