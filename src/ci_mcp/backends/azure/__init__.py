"""Azure AI Foundry backends: `agents` (azure-ai-projects 2.x new agents) and `classic` (azure-ai-agents)."""
