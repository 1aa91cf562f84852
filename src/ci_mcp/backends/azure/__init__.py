"""Azure AI Foundry backends, two packages over a small shared core.

- `agents/`: the `azure` backend, new Foundry agents (azure-ai-projects 2.x and its OpenAI client: agent versions,
  conversations, streamed responses). `agents/backend.py` is the entry point.
- `classic/`: the `azure-classic` backend, classic agents (azure-ai-agents: agents, threads, messages, runs; retired
  2027-03-31). `classic/backend.py` is the entry point.
- Shared by both: `errors.py` (SDK exceptions to `CiMcpError`, the one retry loop and its `RetryPolicy`),
  `credential.py` (the sync credential behind an async adapter), `transport.py` (the HTTP transport of the async
  azure-core clients), `checks.py` (doctor checks of the endpoint and the credential), `remote_files.py` (which
  local file is which Azure file id, kept on disk).

The two packages never import each other.
"""
