"""ci-mcp: a code-interpreter MCP server (local Jupyter kernels or Azure AI Foundry agents)."""

__version__ = "0.1.0"
