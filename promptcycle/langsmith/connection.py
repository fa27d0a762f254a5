"""The connection to LangSmith: where it is, the key, and whether it answers — before anything waits on it.

    conn = connection(config, pipeline, api_key)   # None when there is no key: LangSmith is off
    conn.probe()                                   # GET /info within probe_timeout_seconds, else unavailable
    with conn.session("listing examples of cases") as client:
        ...                                        # a langsmith.Client with our timeouts and retries;
                                                   # its errors leave as LangSmithError / LangSmithUnavailableError

The API URL is `langsmith.api_url`, else LANGSMITH_ENDPOINT, else LangSmith's cloud. The key is held
as a SecretStr, travels only in the SDK's `x-api-key` header, and is scrubbed from every message this
module raises; `repr(conn)` never shows it. Resolving a key from a Prefect block happens in the tasks
layer (`promptcycle_tasks.secrets.resolve_langsmith_key`); this module reads environment variables only.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from promptcycle.config import LangSmithConfig, PromptcycleConfig, effective_langsmith
from promptcycle.errors import LangSmithError, LangSmithUnavailableError, PromptcycleError

if TYPE_CHECKING:
    from promptcycle.deploy.targets import LangSmithOptions

__all__ = ["DEFAULT_API_URL", "LangSmithConnection", "connection", "key_from_env", "api_url_of"]

DEFAULT_API_URL = "https://api.smith.langchain.com"


def key_from_env(settings: LangSmithConfig) -> SecretStr | None:
    """The key in `settings.api_key_env`, or None when that variable is unset or empty."""
    value = os.environ.get(settings.api_key_env, "").strip()
    return SecretStr(value) if value else None


def api_url_of(settings: LangSmithConfig | LangSmithOptions) -> str:
    """`api_url` (of the `langsmith:` section, or of a langsmith deployment target's options), else
    LANGSMITH_ENDPOINT, else LangSmith's cloud — without a trailing slash."""
    return (settings.api_url or os.environ.get("LANGSMITH_ENDPOINT") or DEFAULT_API_URL).rstrip("/")


@dataclass(frozen=True)
class LangSmithConnection:
    """Where LangSmith is and the key to it (never shown), with the timeouts every request keeps."""

    api_url: str
    api_key: SecretStr = field(repr=False)
    timeout_s: float = 10.0
    probe_timeout_s: float = 2.0
    max_retries: int = 2

    def __repr__(self) -> str:
        return f"LangSmithConnection({self.api_url!r})"

    def scrub(self, text: str) -> str:
        """`text` with the key replaced by ***."""
        key = self.api_key.get_secret_value()
        return text.replace(key, "***") if key else text

    def probe(self) -> dict[str, Any]:
        """GET /info within `probe_timeout_s`: LangSmith's info, or `LangSmithUnavailableError`."""
        import httpx2

        try:
            answer = httpx2.get(f"{self.api_url}/info", timeout=self.probe_timeout_s,
                                headers={"accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise LangSmithUnavailableError(self.scrub(
                f"LangSmith at {self.api_url} did not answer GET /info within {self.probe_timeout_s:g} s "
                f"({type(exc).__name__}: {exc})")) from None
        if answer.status_code != 200:
            raise LangSmithUnavailableError(f"LangSmith at {self.api_url} answered GET /info with HTTP "
                                            f"{answer.status_code}")
        try:
            return answer.json()
        except ValueError:
            raise LangSmithUnavailableError(f"LangSmith at {self.api_url} answered GET /info with a body that is "
                                            "not JSON: is this the API URL (not the web app's)?") from None

    def preload(self) -> None:
        """Import the langsmith SDK's client in a background thread, now. The import costs ~0.8 s of CPU; left to
        the first use (a run mirror's first pass, as its cells start) it holds this process's interpreter while
        the first model calls go out. Started while a flow still waits on its checks and the store, it is done
        before it is needed; `client()` then finds it imported (a concurrent import waits for this one)."""
        threading.Thread(target=_import_sdk_client, name="langsmith-sdk-import", daemon=True).start()

    def client(self, info: dict[str, Any] | None = None) -> Any:
        """A `langsmith.Client` bound to this connection: our timeouts, retries of 429 / 5xx honouring
        Retry-After, and no background tracing thread."""
        import langsmith
        from urllib3.util.retry import Retry

        retry = Retry(total=self.max_retries, status_forcelist=[429, 500, 502, 503, 504, 408, 425],
                      backoff_factor=0.5, raise_on_redirect=False, raise_on_status=False,
                      respect_retry_after_header=True, allowed_methods=None)
        timeout_ms = (int(self.probe_timeout_s * 1000), int(self.timeout_s * 1000))
        return langsmith.Client(api_url=self.api_url, api_key=self.api_key.get_secret_value(), retry_config=retry,
                                timeout_ms=timeout_ms, auto_batch_tracing=False, info=info)

    @contextmanager
    def session(self, doing: str) -> Iterator[Any]:
        """Probe, then yield a client; any failure inside leaves as one of our errors saying what was being
        done (`doing`), with the key scrubbed."""
        info = self.probe()
        client = self.client(info)
        try:
            yield client
        except PromptcycleError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK's and requests' errors, translated
            raise self.translate(exc, doing) from None
        finally:
            client.session.close()

    def translate(self, exc: BaseException, doing: str) -> LangSmithError:
        """The SDK's or the transport's exception as ours: unavailable (429, 5xx, timeouts, connection) or
        refused (anything else)."""
        from langsmith import utils as ls_utils

        unavailable = (ls_utils.LangSmithAPIError, ls_utils.LangSmithRateLimitError,
                       ls_utils.LangSmithConnectionError, ls_utils.LangSmithRequestTimeout)
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > 600:
            text = text[:600] + " …"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None:  # the SDK's own errors carry the status in their text only
            found = re.search(r"\b(\d{3}) (?:Server|Client) Error", str(exc))
            status = int(found.group(1)) if found else None
        if isinstance(exc, unavailable) or (isinstance(status, int) and (status == 429 or status >= 500)) \
                or type(exc).__name__ in ("ConnectionError", "ReadTimeout", "ConnectTimeout", "Timeout"):
            return LangSmithUnavailableError(self.scrub(f"{doing} at {self.api_url} failed: LangSmith is "
                                                        f"unavailable ({text})"))
        if isinstance(exc, ls_utils.LangSmithAuthError):
            return LangSmithError(f"{doing} at {self.api_url} failed: the API key was refused (HTTP 401); "
                                  "check LANGSMITH_API_KEY or the credentials block")
        return LangSmithError(self.scrub(f"{doing} at {self.api_url} failed: {text}"))


def connection(config: PromptcycleConfig, pipeline: str | None = None,
               api_key: SecretStr | None = None) -> LangSmithConnection | None:
    """The connection the configuration describes, with `api_key` (resolved by the caller from a block) or
    the key in `langsmith.api_key_env`; None when there is no key — LangSmith is then off."""
    settings = effective_langsmith(config, pipeline)
    key = api_key if api_key is not None and api_key.get_secret_value() else key_from_env(settings)
    if key is None:
        return None
    return LangSmithConnection(api_url=api_url_of(settings), api_key=key, timeout_s=settings.timeout_seconds,
                               probe_timeout_s=settings.probe_timeout_seconds, max_retries=settings.max_retries)


def _import_sdk_client() -> None:
    try:
        import langsmith.client  # noqa: F401
        import urllib3.util.retry  # noqa: F401
    except Exception:  # noqa: BLE001 - the first real use meets (and reports) the same failure
        pass
