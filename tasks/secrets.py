"""Resolving provider API keys: a Prefect credentials block first, then an environment variable."""

from __future__ import annotations

import os

from pydantic import SecretStr

from promptcycle.config import PromptcycleConfig
from promptcycle.errors import ConfigError

__all__ = ["resolve_api_key"]


def resolve_api_key(config: PromptcycleConfig, provider: str) -> SecretStr | None:
    """The key for `provider`, or None when it needs none. Missing configured keys fail clearly."""
    pconf = config.providers[provider]
    file = str(config.source_path) if config.source_path else None
    if pconf.api_key_block:
        from blocks.credentials import ProviderCredentials

        try:
            return ProviderCredentials.load(pconf.api_key_block).get_api_key()
        except ValueError:
            raise ConfigError(f"no ProviderCredentials block named {pconf.api_key_block!r} "
                              "(create it in the Prefect UI or with ProviderCredentials(api_key=...).save(name))",
                              file=file, path=f"providers.{provider}.api_key_block",
                              found=pconf.api_key_block, expected="an existing block name") from None
    if pconf.api_key_env:
        value = os.environ.get(pconf.api_key_env)
        if not value:
            raise ConfigError(f"environment variable {pconf.api_key_env} is not set",
                              file=file, path=f"providers.{provider}.api_key_env",
                              found=pconf.api_key_env, expected="a set environment variable holding the key")
        return SecretStr(value)
    return None
