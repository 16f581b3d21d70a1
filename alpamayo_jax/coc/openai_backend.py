"""Labeller backend for any OpenAI-compatible chat-completions server (a local vLLM, for example).

Plain `urllib.request`, no client library. Base URL (ending in /v1), model and key come from arguments
or from OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY.
"""

import dataclasses
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping

from alpamayo_jax.coc.labeller import LabelRequest, LabelResult, TransportError, label_with_retries
from alpamayo_jax.coc.schema import label_json_schema


@dataclasses.dataclass(frozen=True)
class OpenAIConfig:
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_attempts: int = 3
    temperature: float = 0.0
    max_tokens: int = 2048
    # "json_object" works on most servers; "json_schema" also sends the label schema.
    response_format: str = "json_object"
    image_format: str = "JPEG"

    @classmethod
    def from_env(
        cls,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] = os.environ,
        **kwargs,
    ) -> "OpenAIConfig":
        """Arguments win over the environment; a missing base URL or model is an error naming both."""
        base_url = base_url or env.get("OPENAI_BASE_URL")
        model = model or env.get("OPENAI_MODEL")
        if not base_url:
            raise ValueError("openai backend: no base URL (pass --base-url or set OPENAI_BASE_URL)")
        if not model:
            raise ValueError("openai backend: no model (pass --model or set OPENAI_MODEL)")
        return cls(base_url.rstrip("/"), model, api_key or env.get("OPENAI_API_KEY"), **kwargs)


class OpenAILabeller:
    """`Labeller` that asks a chat-completions endpoint and retries with the validation error."""

    def __init__(self, config: OpenAIConfig):
        if config.response_format not in ("json_object", "json_schema"):
            raise ValueError(f"openai backend: unknown response_format {config.response_format!r}")
        self.config = config
        self.name = f"openai:{config.model}"

    def _payload(self, messages: list[dict]) -> dict:
        if self.config.response_format == "json_schema":
            fmt = {"type": "json_schema", "json_schema": {"name": "coc_label", "schema": label_json_schema()}}
        else:
            fmt = {"type": "json_object"}
        return {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "response_format": fmt,
        }

    def complete(self, messages: list[dict]) -> str:
        """The first choice's message text; raises TransportError on timeouts, HTTP errors and malformed
        envelopes."""
        url = f"{self.config.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        body = json.dumps(self._payload(messages)).encode()
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise TransportError("http_error", f"{url}: HTTP {e.code} {e.reason}") from e
        except TimeoutError as e:
            raise TransportError("timeout", f"{url}: no reply within {self.config.timeout_s} s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TransportError("timeout", f"{url}: no reply within {self.config.timeout_s} s") from e
            raise TransportError("http_error", f"{url}: {e.reason}") from e
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise TransportError(
                "bad_response", f"{url}: not a chat-completions response: {raw[:200]!r}"
            ) from e
        if not isinstance(content, str):
            raise TransportError("bad_response", f"{url}: message content is not text: {content!r}")
        return content

    def label(self, request: LabelRequest) -> LabelResult:
        return label_with_retries(request, self.complete, self.name, self.config.max_attempts)
