"""One agent version per definition, reused: created only when the definition (model, instructions, file slots)
has no version yet.

Files reach the code interpreter through *structured inputs* (see agents.py for why): a definition for K files
declares inputs `file_1..file_K` and puts `{{file_1}}..{{file_K}}` in the tool's `file_ids`. So one definition (and
one version) exists per file count used, each found again by the fingerprint stored in its metadata. The first use
in a process lists the agent's versions once (usually two GETs: a page and the empty page after it).
"""

from __future__ import annotations

import hashlib
import json

import anyio
from azure.ai.projects.aio import AIProjectClient
from azure.ai.projects.models import (
    AutoCodeInterpreterToolParam,
    CodeInterpreterTool,
    PromptAgentDefinition,
    StructuredInputDefinition,
)
from azure.core.exceptions import ResourceNotFoundError

from ci_mcp.backends.azure.errors import RetryPolicy, call_with_retry

MAX_FILES = 20
"""Files on one code-interpreter tool (the service's documented limit)."""
FINGERPRINT_KEY = "ci_mcp_fingerprint"


def slot_name(n: int) -> str:
    return f"file_{n}"


def build_definition(model: str, instructions: str, slots: int) -> PromptAgentDefinition:
    container = AutoCodeInterpreterToolParam(file_ids=["{{" + slot_name(i) + "}}" for i in range(1, slots + 1)])
    inputs = {
        slot_name(i): StructuredInputDefinition(
            description=f"Files-API id of attached file {i}", schema={"type": "string"}, required=True
        )
        for i in range(1, slots + 1)
    }
    return PromptAgentDefinition(
        model=model,
        instructions=instructions,
        tools=[CodeInterpreterTool(container=container)],
        structured_inputs=inputs or None,
    )


def fingerprint(agent_name: str, definition: PromptAgentDefinition) -> str:
    canonical = json.dumps({"name": agent_name, "definition": definition.as_dict()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class AgentVersions:
    def __init__(self, agent_name: str, model: str, instructions: str, policy: RetryPolicy) -> None:
        self.agent_name = agent_name
        self.model = model
        self.instructions = instructions
        self.policy = policy
        self._known: dict[str, str] = {}
        self._listed = False
        self._lock = anyio.Lock()
        self.created = 0

    async def ensure(self, project: AIProjectClient, slots: int, deadline: float | None = None) -> str:
        """The version string of the agent for `slots` files, creating it when no version matches."""
        definition = build_definition(self.model, self.instructions, slots)
        key = fingerprint(self.agent_name, definition)
        if key in self._known:
            return self._known[key]
        async with self._lock:
            if not self._listed:
                await call_with_retry(
                    lambda: self._list(project),
                    what="listing the agent's versions",
                    policy=self.policy,
                    deadline=deadline,
                )
                self._listed = True
            if key not in self._known:
                created = await call_with_retry(
                    lambda: project.agents.create_version(
                        self.agent_name,
                        definition=definition,
                        description="ci-mcp code interpreter (managed by ci-mcp; reused across runs)",
                        metadata={FINGERPRINT_KEY: key, "ci_mcp_file_slots": str(slots)},
                    ),
                    what="creating the agent version",
                    policy=self.policy,
                    idempotent=False,
                    deadline=deadline,
                )
                self._known[key] = str(created.version)
                self.created += 1
            return self._known[key]

    async def _list(self, project: AIProjectClient) -> None:
        found: dict[str, str] = {}
        try:
            async for details in project.agents.list_versions(self.agent_name, order="desc"):
                key = (details.metadata or {}).get(FINGERPRINT_KEY)
                if key and key not in found:  # newest first: the latest version of a fingerprint wins
                    found[key] = str(details.version)
        except ResourceNotFoundError:  # no agent of that name yet
            pass
        for key, version in found.items():
            self._known.setdefault(key, version)
