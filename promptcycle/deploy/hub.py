"""The LangSmith prompt hub, spoken to over its REST API with the requests the LangSmith SDK makes.

    hub = PromptHub("https://api.smith.langchain.com", api_key, timeout_s=10.0)
    pushed = hub.push("customer-insights", manifest, tag="production", description="promptcycle version …")
    pushed.commit_hash, pushed.created_prompt

The SDK's own `Client.push_prompt` (langsmith 0.15) imports langchain-core even for a ready-made
manifest, and creates the prompt before it finds out it cannot commit. `push` sends the same
requests itself (paths relative to the API URL; the key only in the `x-api-key` header), in an
order that creates nothing remote until the commit can be made:

    GET    /repos/{owner}/{name}            does the prompt exist? (404: no) — a wrong key stops here
    GET    /commits/{owner}/{name}?limit=1  its latest commit: the new commit's parent
    GET    /commits/{owner}/{name}/{hash}   the latest commit's manifest: is there anything to commit?
    GET    /settings                        only for a missing prompt named with an owner: is it ours?
    POST   /repos                           create the prompt: only when it is missing, after the above
    POST   /commits/{owner}/{name}          the commit: {"parent_commit", "manifest", "description"}
    POST   /repos/{owner}/{name}/tags       the tag: {"tag_name", "commit_id"}
    DELETE /repos/{owner}/{name}            only to remove a prompt this push created, when its commit failed

The hub refuses a commit whose manifest equals the latest one (409 "Nothing to commit"), so pushing
the version the prompt already holds makes no commit: the tag is pointed at the latest commit.

Requests that change nothing or are safe to repeat (the GETs, the tag) are retried on a connection
failure, 429 or 5xx, honouring Retry-After; the commit and the prompt's creation are not (a retry
after a lost answer could commit twice).

The hub has no way to delete a commit: when the commit succeeds and the tag does not, the commit
stays (untagged, so whatever reads the tag is unaffected) and the error says so. `owner` "-" is the
API key's own workspace, as in the SDK.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from promptcycle.errors import TargetError

__all__ = ["PromptHub", "HubPush", "split_prompt_name"]


def split_prompt_name(name: str) -> tuple[str, str]:
    """`owner/name` or `name` (owner "-": the key's own workspace) -> (owner, name); the SDK's rules."""
    if not name or name.count("/") > 1 or name.startswith("/") or name.endswith("/") or ":" in name:
        raise TargetError(f"invalid prompt name {name!r}: expected 'name' or 'owner/name' (no ':' and one '/' at "
                          "most)")
    owner, _, repo = name.rpartition("/")
    return owner or "-", repo


@dataclass(frozen=True)
class HubPush:
    """What one push did: the commit it made, and whether it created the prompt."""

    owner: str
    name: str
    commit_hash: str
    commit_id: str
    created_prompt: bool
    committed: bool = True  # False: the prompt already held this manifest; only the tag moved

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}:{self.commit_hash[:8]}"


class _Refused(Exception):
    """A request the hub answered with an error status (or that did not reach it)."""


class PromptHub:
    """A small client of the prompt hub's REST API; see the module docstring for the requests."""

    def __init__(self, api_url: str, api_key: SecretStr, *, timeout_s: float = 10.0, retries: int = 2,
                 backoff_s: float = 0.5):
        if not api_url.startswith(("http://", "https://")):
            raise TargetError(f"the LangSmith API URL must start with http:// or https://, found {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self._key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"PromptHub({self.api_url!r})"

    # -- requests ------------------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "***") if key else text

    def _request(self, client: Any, method: str, path: str, *, ok_404: bool = False, retry: bool | None = None,
                 **kwargs: Any) -> Any:
        """The JSON answer of `method path` (None for an empty body, or a 404 when `ok_404`). GETs (and
        requests marked `retry`) are retried on a connection failure, 429 or 5xx."""
        import httpx2

        from promptcycle.providers import parse_retry_after

        attempts = 1 + (self.retries if (method == "GET" if retry is None else retry) else 0)
        for attempt in range(1, attempts + 1):
            wait = self.backoff_s * 2 ** (attempt - 1)
            try:
                response = client.request(method, path, **kwargs)
            except httpx2.HTTPError as exc:
                if attempt == attempts:
                    raise _Refused(self._scrub(f"{method} {path}: {type(exc).__name__}: {exc}")) from None
            else:
                if not (response.status_code == 429 or response.status_code >= 500) or attempt == attempts:
                    break
                after = parse_retry_after(response.headers.get("retry-after"))
                wait = after if after is not None else wait
            time.sleep(min(30.0, wait))
        if ok_404 and response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            text = response.text[:300].strip() or "(empty body)"
            raise _Refused(self._scrub(f"{method} {path}: HTTP {response.status_code}: {text}"))
        try:
            return response.json() if response.content else None
        except ValueError:
            raise _Refused(f"{method} {path}: HTTP {response.status_code} with a body that is not JSON") from None

    def _client(self) -> Any:
        import httpx2

        headers = {"x-api-key": self._key.get_secret_value(), "accept": "application/json",
                   "user-agent": "promptcycle"}
        return httpx2.Client(base_url=self.api_url, headers=headers, timeout=self.timeout_s, follow_redirects=False)

    # -- push ----------------------------------------------------------------------------------------------

    def push(self, prompt_name: str, manifest: dict[str, Any], *, tag: str, description: str) -> HubPush:
        """Commit `manifest` to the prompt `prompt_name` and point `tag` at the commit.

        Creates the prompt when it is missing, only once everything before the commit has succeeded;
        if the commit then fails, deletes it again. Raises `TargetError` saying what was left in the hub.
        """
        owner, name = split_prompt_name(prompt_name)
        if not tag:
            raise TargetError("the commit tag is empty")
        try:
            json.dumps(manifest, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TargetError(f"the prompt manifest is not valid JSON: {exc}") from None
        if not (isinstance(manifest, dict) and "lc" in manifest and "id" in manifest):
            raise TargetError("the prompt manifest is not a serialized LangChain object (no 'lc' and 'id')")

        with self._client() as client:
            try:
                exists = self._request(client, "GET", f"/repos/{owner}/{name}", ok_404=True) is not None
                latest = self._latest_commit(client, owner, name) if exists else None
                parent = latest["commit_hash"] if latest else None
                if latest is not None and self._manifest_of(client, owner, name, parent) == manifest:
                    pushed = HubPush(owner=owner, name=name, commit_hash=str(parent), commit_id=str(latest["id"]),
                                     created_prompt=False, committed=False)
                    self._tag(client, pushed, tag, exists=True)
                    return pushed
                if not exists and owner != "-":
                    handle = (self._request(client, "GET", "/settings") or {}).get("tenant_handle")
                    if handle != owner:
                        raise _Refused(f"no prompt {owner}/{name} in the hub, and promptcycle creates prompts only "
                                       f"in the key's own workspace (handle {handle!r}); create it there first")
            except _Refused as exc:
                raise TargetError(f"{exc}; nothing was changed in the hub") from None

            if not exists:
                try:
                    self._request(client, "POST", "/repos", json={"repo_handle": name, "description": "",
                                                                  "readme": "", "tags": [], "is_public": False})
                except _Refused as exc:
                    raise TargetError(f"creating the prompt {owner}/{name} failed: {exc}; nothing was changed in "
                                      "the hub") from None
            try:
                body: dict[str, Any] = {"parent_commit": parent, "manifest": manifest, "description": description}
                commit = (self._request(client, "POST", f"/commits/{owner}/{name}", json=body) or {}).get("commit")
                if not isinstance(commit, dict) or not commit.get("commit_hash") or not commit.get("id"):
                    raise _Refused(f"POST /commits/{owner}/{name}: the answer names no commit")
            except _Refused as exc:
                left = self._remove_created(client, owner, name) if not exists else "nothing was changed in the hub"
                raise TargetError(f"the commit to {owner}/{name} failed: {exc}; {left}") from None

            pushed = HubPush(owner=owner, name=name, commit_hash=str(commit["commit_hash"]),
                             commit_id=str(commit["id"]), created_prompt=not exists)
            self._tag(client, pushed, tag, exists=exists)
        return pushed

    def _tag(self, client: Any, pushed: HubPush, tag: str, *, exists: bool) -> None:
        owner, name = pushed.owner, pushed.name
        try:
            self._request(client, "POST", f"/repos/{owner}/{name}/tags", retry=True,
                          json={"tag_name": tag, "commit_id": pushed.commit_id})
        except _Refused as exc:
            what = "was made" if pushed.committed else "is the latest"
            left = (self._remove_created(client, owner, name) if not exists else
                    f"commit {pushed.ref} {what} but is not tagged {tag!r}: the tag still points where it did")
            raise TargetError(f"tagging {pushed.ref} {tag!r} failed: {exc}; {left}") from None

    def _latest_commit(self, client: Any, owner: str, name: str) -> dict[str, Any] | None:
        answer = self._request(client, "GET", f"/commits/{owner}/{name}", params={"limit": 1, "offset": 0}) or {}
        commits = answer.get("commits") or []
        return commits[0] if commits and commits[0].get("commit_hash") else None

    def _manifest_of(self, client: Any, owner: str, name: str, commit_hash: str) -> Any:
        return (self._request(client, "GET", f"/commits/{owner}/{name}/{commit_hash}") or {}).get("manifest")

    def _remove_created(self, client: Any, owner: str, name: str) -> str:
        """Delete the prompt this push created; say what is left."""
        try:
            self._request(client, "DELETE", f"/repos/{owner}/{name}")
        except _Refused as exc:
            return (f"the prompt {owner}/{name} created for this push could NOT be deleted again ({exc}): "
                    "delete it in LangSmith by hand")
        return f"the prompt {owner}/{name} created for this push was deleted again: nothing is left in the hub"

    def delete_prompt(self, prompt_name: str) -> None:
        """Delete the prompt `prompt_name` (used to undo a push that created it)."""
        owner, name = split_prompt_name(prompt_name)
        with self._client() as client:
            try:
                self._request(client, "DELETE", f"/repos/{owner}/{name}")
            except _Refused as exc:
                raise TargetError(str(exc)) from None
