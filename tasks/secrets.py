"""Resolving provider API keys: a Prefect credentials block first, then an environment variable.

Prefect's `Block.load` returns a coroutine when called from async code (an async task, or anything
under a running event loop), so async code must use `aresolve_api_key` / `aresolve_api_keys`, which
await `Block.aload`; sync tasks use `resolve_api_key`.
"""

from __future__ import annotations

import os

from pydantic import SecretStr

from promptcycle.config import PromptcycleConfig
from promptcycle.errors import ConfigError

__all__ = ["resolve_api_key", "aresolve_api_key", "aresolve_api_keys", "resolve_langsmith_key",
           "aresolve_langsmith_key"]


def _missing_block(config: PromptcycleConfig, provider: str, name: str) -> ConfigError:
    return ConfigError(f"no ProviderCredentials block named {name!r} "
                       "(create it in the Prefect UI or with ProviderCredentials(api_key=...).save(name))",
                       file=str(config.source_path) if config.source_path else None,
                       path=f"providers.{provider}.api_key_block", found=name, expected="an existing block name")


def _key_from_env(config: PromptcycleConfig, provider: str) -> SecretStr | None:
    pconf = config.providers[provider]
    if not pconf.api_key_env:
        return None
    value = os.environ.get(pconf.api_key_env)
    if not value:
        raise ConfigError(f"environment variable {pconf.api_key_env} is not set",
                          file=str(config.source_path) if config.source_path else None,
                          path=f"providers.{provider}.api_key_env",
                          found=pconf.api_key_env, expected="a set environment variable holding the key")
    return SecretStr(value)


def resolve_api_key(config: PromptcycleConfig, provider: str) -> SecretStr | None:
    """The key for `provider`, or None when it needs none. Missing configured keys fail clearly.
    For sync code only (see the module docstring)."""
    block = config.providers[provider].api_key_block
    if block:
        from promptcycle_blocks.credentials import ProviderCredentials

        try:
            return ProviderCredentials.load(block, _sync=True).get_api_key()
        except ValueError:
            raise _missing_block(config, provider, block) from None
    return _key_from_env(config, provider)


async def aresolve_api_key(config: PromptcycleConfig, provider: str) -> SecretStr | None:
    """`resolve_api_key` for async code: awaits Prefect's block loader."""
    block = config.providers[provider].api_key_block
    if block:
        from promptcycle_blocks.credentials import ProviderCredentials

        try:
            credentials = await ProviderCredentials.aload(block)
        except ValueError:
            raise _missing_block(config, provider, block) from None
        return credentials.get_api_key()
    return _key_from_env(config, provider)


async def aresolve_api_keys(config: PromptcycleConfig, providers: list[str]) -> dict[str, SecretStr | None]:
    """The keys of `providers`, each loaded once: a lookup for code that needs a key synchronously."""
    return {name: await aresolve_api_key(config, name) for name in dict.fromkeys(providers)}


# -- LangSmith ----------------------------------------------------------------------------------------------------

def _missing_langsmith_block(config: PromptcycleConfig, name: str) -> ConfigError:
    return ConfigError(f"no LangSmith Credentials block named {name!r} (create it in the Prefect UI or with "
                       "LangSmithCredentials(api_key=...).save(name))",
                       file=str(config.source_path) if config.source_path else None,
                       path="langsmith.api_key_block", found=name, expected="an existing block name")


def resolve_langsmith_key(config: PromptcycleConfig, pipeline: str | None = None) -> SecretStr | None:
    """The LangSmith API key: the `langsmith.api_key_block` block, else `langsmith.api_key_env`; None when
    neither holds one (LangSmith is then off). For sync code only (see the module docstring)."""
    from promptcycle.config import effective_langsmith
    from promptcycle.langsmith.connection import key_from_env

    settings = effective_langsmith(config, pipeline)
    if settings.api_key_block:
        from promptcycle_blocks.credentials import LangSmithCredentials

        try:
            return LangSmithCredentials.load(settings.api_key_block, _sync=True).get_api_key()
        except ValueError:
            raise _missing_langsmith_block(config, settings.api_key_block) from None
    return key_from_env(settings)


async def aresolve_langsmith_key(config: PromptcycleConfig, pipeline: str | None = None) -> SecretStr | None:
    """`resolve_langsmith_key` for async code: awaits Prefect's block loader."""
    from promptcycle.config import effective_langsmith
    from promptcycle.langsmith.connection import key_from_env

    settings = effective_langsmith(config, pipeline)
    if settings.api_key_block:
        from promptcycle_blocks.credentials import LangSmithCredentials

        try:
            credentials = await LangSmithCredentials.aload(settings.api_key_block)
        except ValueError:
            raise _missing_langsmith_block(config, settings.api_key_block) from None
        return credentials.get_api_key()
    return key_from_env(settings)
