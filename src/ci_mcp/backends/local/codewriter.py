"""Natural-language requests on the local backend: a model behind an OpenAI-compatible chat endpoint (Ollama,
vLLM, LM Studio, Azure OpenAI, OpenAI) writes the Python, the sandboxed kernel runs it.

This is the boundary for the `openai` client: its errors become CiMcpErrors that name the setting to check and
never carry the key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ci_mcp.errors import BackendUnavailableError, InvalidInputError

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)

SYSTEM = (
    "You write Python for a Jupyter kernel that answers a data-analysis request. Reply with exactly one fenced "
    "```python code block and nothing else. {where} The kernel runs {libraries} There is no network. Print the "
    "numbers that answer the request. Charts (where matplotlib is installed): draw them with matplotlib and leave "
    "the figure open (it is returned as an image); save other outputs as files in the working directory. "
    "Variables from earlier code in this session still exist."
)


def extract_code(reply: str) -> str:
    blocks = _FENCE.findall(reply)
    if blocks:
        return "\n\n".join(b.strip() for b in blocks)
    return reply.strip()


class CodeWriter:
    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float = 120.0) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self._client = AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=2)

    async def aclose(self) -> None:
        await self._client.close()

    async def write(
        self, request: str, files: Sequence[str], history: Sequence[str], data_mount: str, libraries: str
    ) -> str:
        """Code for `request`; `libraries` says what the kernel can import (measured, see interpreter.py)."""
        import openai

        where = (
            f"Files are in {data_mount}, the working directory."
            if data_mount
            else "Files are in the working directory; use relative paths."
        )
        context = "Files available: " + (", ".join(files) if files else "(none)")
        if history:
            context += "\n\nCode already run in this session (most recent last):\n" + "\n# ---\n".join(history)
        messages = [
            {"role": "system", "content": SYSTEM.format(where=where, libraries=libraries)},
            {"role": "user", "content": f"{context}\n\nRequest: {request}"},
        ]
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
            )
        except openai.AuthenticationError:
            raise BackendUnavailableError(
                "The model endpoint refused the credentials; check CI_MCP_LLM_API_KEY. Meanwhile pass `code`."
            ) from None
        except openai.NotFoundError:
            raise InvalidInputError(
                f"The model endpoint does not know the model '{self.model}'; check CI_MCP_LLM_MODEL. "
                "Meanwhile pass `code`."
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError):
            raise BackendUnavailableError(
                "The model endpoint (CI_MCP_LLM_BASE_URL) could not be reached or is overloaded. Pass `code` "
                "instead, or try again."
            ) from None
        except openai.APIStatusError as exc:
            raise BackendUnavailableError(
                f"The model endpoint answered HTTP {exc.status_code}. Pass `code` instead."
            ) from None
        choice = completion.choices[0].message.content if completion.choices else None
        code = extract_code(choice or "")
        if not code:
            raise BackendUnavailableError("The model returned no code for this request. Rephrase it, or pass `code`.")
        return code
