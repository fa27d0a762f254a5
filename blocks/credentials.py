"""Prefect blocks holding provider and deployment-target credentials.

Create one in the Prefect UI (Blocks → "Provider Credentials") or in code:

    ProviderCredentials(api_key="sk-…").save("openai-credentials")

and name it in pipelines.yaml under `providers.<name>.api_key_block`. The key is a SecretStr: masked
in the UI, in `prefect block inspect`, in reprs and in logs.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

__all__ = ["ProviderCredentials", "WebhookCredentials", "LangSmithCredentials"]


class ProviderCredentials(Block):
    """The API key of an OpenAI-compatible model provider."""

    _block_type_name = "Provider Credentials"
    _block_type_slug = "promptcycle-provider-credentials"
    _description = "API key for an OpenAI-compatible provider used by promptcycle pipelines."

    api_key: SecretStr = Field(description="The provider's API key; stored encrypted, never logged.")
    organization: str | None = Field(default=None, description="Optional organization id some providers use.")

    def get_api_key(self) -> SecretStr:
        return self.api_key


class WebhookCredentials(Block):
    """The token a deployment webhook sends to the application's reload endpoint.

    Name it in pipelines.yaml under a webhook target's `options.credentials_block`.
    """

    _block_type_name = "Webhook Credentials"
    _block_type_slug = "promptcycle-webhook-credentials"
    _description = "Token promptcycle sends with a deployment webhook (POST of the production prompt)."

    token: SecretStr = Field(description="The token, sent as 'Authorization: Bearer <token>' (or in the target's "
                             "configured header); stored encrypted, never logged.")

    def get_token(self) -> SecretStr:
        return self.token


class LangSmithCredentials(Block):
    """The LangSmith API key promptcycle uses for datasets, run mirroring and production feedback.

    Name it in pipelines.yaml under `langsmith.api_key_block` (it wins over `langsmith.api_key_env`).
    """

    _block_type_name = "LangSmith Credentials"
    _block_type_slug = "promptcycle-langsmith-credentials"
    _description = "LangSmith API key promptcycle uses for datasets, run mirroring and production feedback."

    api_key: SecretStr = Field(description="The LangSmith API key (lsv2_…); stored encrypted, never logged.")

    def get_api_key(self) -> SecretStr:
        return self.api_key
