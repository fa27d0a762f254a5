"""Deployment targets: where the production prompt goes, behind one registry.

    targets = build_targets(config, "customer-insights")          # from `deployment.targets`
    rollout = apply_targets(targets, DeployedPrompt.of(version), previous=DeployedPrompt.of(production))
    rollout.outcomes                                               # one TargetOutcome per target
    rollout.undo()                                                 # put every target back as it was

A deployment is all or nothing: when one target fails, the targets already written are restored to
what they held before, and `TargetError` says which failed, why, and what was restored.

Every target receives the same bytes, `DeployedPrompt.payload()`: deterministic JSON of the version
(no timestamps), so deploying a version again — a rollback — reproduces the earlier bytes exactly.

Built-in kinds (options in docs/deployment.md):
- `file`: writes the payload to a path atomically (temporary file + rename; never half-written) and
  keeps timestamped backups of what it replaced;
- `webhook`: POSTs the payload to the application's reload endpoint, retrying connection failures,
  429 and 5xx with back-off; a bearer token comes from an environment variable or a Prefect
  "Webhook Credentials" block;
- `langsmith`: commits the prompt to the LangSmith prompt hub and tags the commit, over the hub's REST
  API (`promptcycle.deploy.hub`; no langchain-core needed), when an API key is set, and is skipped,
  saying so, when none is.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from promptcycle.errors import ConfigError, TargetError
from promptcycle.prompts import PLACEHOLDER
from promptcycle.registry import Registry

__all__ = [
    "PAYLOAD_FORMAT",
    "DeployedPrompt",
    "TargetError",
    "TargetOutcome",
    "Receipt",
    "Rollout",
    "Target",
    "FileTarget",
    "WebhookTarget",
    "LangSmithTarget",
    "target_kinds",
    "build_targets",
    "apply_targets",
]

PAYLOAD_FORMAT = "promptcycle.prompt/1"

SecretLookup = Callable[[str, str], SecretStr]  # (block type, block name) -> its secret




@dataclass(frozen=True)
class DeployedPrompt:
    """A prompt version as the targets receive it."""

    pipeline: str
    scope: str
    version: str
    system: str
    template: str
    variables: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: Any, scope: str | None = None) -> DeployedPrompt:
        """From a `PromptVersionRecord` (scope: the record's own unless given)."""
        return cls(pipeline=record.pipeline, scope=(record.scope or "") if scope is None else scope,
                   version=record.prompt_hash, system=record.system, template=record.template,
                   variables=tuple(record.variables or ()))

    def payload(self) -> bytes:
        """The bytes every target receives: sorted, indented JSON and a final newline."""
        data = {"format": PAYLOAD_FORMAT, "pipeline": self.pipeline, "scope": self.scope, "version": self.version,
                "system": self.system, "template": self.template, "variables": list(self.variables)}
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass
class TargetOutcome:
    """What one target did: status 'written', 'unchanged', 'skipped', 'restored', 'failed',
    'restore_failed' or 'not_run', with a sentence of detail."""

    target: str
    kind: str
    status: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Receipt:
    """What a target did and what it needs to undo it."""

    outcome: TargetOutcome
    undo: Any = None


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target:
    """Base class: subclasses set `kind` and `Options` and implement `deploy` and `restore`."""

    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = _Options
    # Names of the options that hold an environment variable / a credentials block for the secret.
    secret_env_option: ClassVar[str | None] = None
    secret_block_option: ClassVar[str | None] = None
    secret_block_type: ClassVar[str | None] = None  # the Prefect block type that option names
    secret_required: ClassVar[bool] = True  # False: a missing secret means "skip", not a configuration error

    def __init__(self, name: str, options: BaseModel, *, base_dir: Path, secret: SecretStr | None = None):
        self.name = name
        self.options = options
        self.base_dir = base_dir
        self.secret = secret

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def outcome(self, status: str, detail: str) -> TargetOutcome:
        return TargetOutcome(target=self.name, kind=self.kind, status=status, detail=detail)

    @classmethod
    def option_defaults(cls, config: Any, pipeline: str) -> dict[str, Any]:
        """Option values taken from elsewhere in pipelines.yaml when the target's own options leave them out."""
        return {}

    def deploy(self, prompt: DeployedPrompt, previous: DeployedPrompt | None) -> Receipt:
        """Put `prompt` in place (`previous` is the version production served until now, if any)."""
        raise NotImplementedError

    def restore(self, receipt: Receipt) -> TargetOutcome:
        """Undo what `deploy` did, as its receipt describes."""
        raise NotImplementedError


target_kinds: Registry[type[Target]] = Registry("target kind")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


# -- file -------------------------------------------------------------------------------------------------------

class FileOptions(_Options):
    path: str = Field(description="Where the prompt JSON is written; relative to pipelines.yaml; may contain "
                      "{pipeline} and {scope}.")
    keep_backups: int = Field(default=20, ge=0, description="Backups of replaced files kept (newest first).")
    backup_dir: str | None = Field(default=None, description="Where backups go; default '<path>.backups' "
                                   "next to the file.")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, flush it to disk, and rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    try:  # make the rename itself durable; not every filesystem lets a directory be opened
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@target_kinds.register("file")
class FileTarget(Target):
    """Writes the prompt JSON to a file atomically and keeps timestamped backups of what it replaces."""

    kind = "file"
    Options = FileOptions
    options: FileOptions

    def path_for(self, prompt: DeployedPrompt) -> Path:
        raw = self.options.path
        if "{scope}" in raw:
            raw = raw.replace("{scope}", prompt.scope or "all-models")
        raw = raw.replace("{pipeline}", prompt.pipeline)
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        if prompt.scope and "{scope}" not in self.options.path:
            path = path.with_name(f"{path.stem}.{prompt.scope}{path.suffix}")
        return path

    def _backup(self, path: Path, data: bytes) -> Path:
        folder = Path(self.options.backup_dir) if self.options.backup_dir else path.with_name(path.name + ".backups")
        folder = folder if folder.is_absolute() else self.base_dir / folder
        folder.mkdir(parents=True, exist_ok=True)
        try:
            version = str(json.loads(data).get("version") or "unknown")
        except (ValueError, AttributeError):
            version = "unknown"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        backup = folder / f"{path.name}.{stamp}.{version}.bak"
        _write_atomically(backup, data)
        kept = sorted(folder.glob(f"{path.name}.*.bak"), reverse=True)
        for old in kept[self.options.keep_backups:]:
            old.unlink(missing_ok=True)
        return backup

    def deploy(self, prompt: DeployedPrompt, previous: DeployedPrompt | None) -> Receipt:
        path = self.path_for(prompt)
        data = prompt.payload()
        try:
            before = path.read_bytes() if path.exists() else None
            if before == data:
                return Receipt(self.outcome("unchanged", f"{path} already holds version {prompt.version}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            backup = self._backup(path, before) if before is not None and self.options.keep_backups else None
            _write_atomically(path, data)
        except OSError as exc:
            raise TargetError(f"file target {self.name!r}: cannot write {path}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        detail = f"wrote version {prompt.version} to {path} ({len(data)} bytes, sha256 {_digest(data)})"
        if backup is not None:
            detail += f"; the replaced file is backed up as {backup.name}"
        return Receipt(self.outcome("written", detail), undo=(path, before))

    def restore(self, receipt: Receipt) -> TargetOutcome:
        if receipt.undo is None:
            return self.outcome("restored", receipt.outcome.detail + " (nothing to undo)")
        path, before = receipt.undo
        try:
            if before is None:
                path.unlink(missing_ok=True)
                return self.outcome("restored", f"removed {path} (there was no file before)")
            _write_atomically(path, before)
        except OSError as exc:
            raise TargetError(f"file target {self.name!r}: cannot restore {path}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        return self.outcome("restored", f"restored {path} to its previous bytes (sha256 {_digest(before)})")


# -- webhook ----------------------------------------------------------------------------------------------------

class WebhookOptions(_Options):
    url: str = Field(description="The application's reload endpoint (http or https).")
    token_env: str | None = Field(default=None, description="Environment variable holding a bearer token.")
    credentials_block: str | None = Field(default=None, description="Name of a 'Webhook Credentials' Prefect block "
                                          "holding the token (wins over token_env).")
    header: str = Field(default="Authorization", description="Header carrying the token ('Bearer <token>' for "
                        "Authorization, the bare token otherwise).")
    headers: dict[str, str] = Field(default_factory=dict, description="Other headers to send (no secrets here).")
    timeout_seconds: float = Field(default=5.0, gt=0, description="Per-attempt timeout.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries after the first attempt.")
    backoff_seconds: float = Field(default=0.25, ge=0, description="Base of the exponential back-off.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v


@target_kinds.register("webhook")
class WebhookTarget(Target):
    """POSTs the prompt JSON to the application's reload endpoint, with retries."""

    kind = "webhook"
    Options = WebhookOptions
    options: WebhookOptions
    secret_env_option = "token_env"
    secret_block_option = "credentials_block"
    secret_block_type = "Webhook Credentials"

    def _scrub(self, text: str) -> str:
        token = self.secret.get_secret_value() if self.secret else ""
        return text.replace(token, "***") if token else text

    def _post(self, prompt: DeployedPrompt) -> str:
        import httpx2

        from promptcycle.providers import parse_retry_after

        opts = self.options
        headers = {"content-type": "application/json", "x-promptcycle-version": prompt.version,
                   "x-promptcycle-pipeline": prompt.pipeline, **opts.headers}
        if self.secret is not None:
            token = self.secret.get_secret_value()
            headers[opts.header] = f"Bearer {token}" if opts.header.lower() == "authorization" else token
        body = prompt.payload()
        attempts = opts.max_retries + 1
        problem = ""
        with httpx2.Client(timeout=opts.timeout_seconds, follow_redirects=False) as client:
            for attempt in range(1, attempts + 1):
                retry_after = None
                try:
                    response = client.post(opts.url, content=body, headers=headers)
                except httpx2.TransportError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if 200 <= response.status_code < 300:
                        return f"HTTP {response.status_code} after {attempt} attempt(s)"
                    problem = f"HTTP {response.status_code}: {response.text[:200].strip() or '(empty body)'}"
                    if response.status_code != 429 and response.status_code < 500:
                        raise TargetError(self._scrub(f"webhook target {self.name!r}: {opts.url} refused version "
                                                      f"{prompt.version} ({problem}); not retried"))
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                if attempt < attempts:
                    delay = opts.backoff_seconds * 2 ** (attempt - 1)
                    time.sleep(min(30.0, retry_after if retry_after is not None else delay))
        raise TargetError(self._scrub(f"webhook target {self.name!r}: {opts.url} failed after {attempts} attempt(s); "
                                      f"last: {problem}"))

    def deploy(self, prompt: DeployedPrompt, previous: DeployedPrompt | None) -> Receipt:
        how = self._post(prompt)
        return Receipt(self.outcome("written", f"POSTed version {prompt.version} to {self.options.url} ({how})"),
                       undo=previous)

    def restore(self, receipt: Receipt) -> TargetOutcome:
        previous: DeployedPrompt | None = receipt.undo
        if previous is None:
            return self.outcome("restored", "nothing to restore: the application had no earlier version from us")
        how = self._post(previous)
        return self.outcome("restored", f"POSTed version {previous.version} back to {self.options.url} ({how})")


# -- LangSmith prompt hub ---------------------------------------------------------------------------------------

class LangSmithOptions(_Options):
    prompt_name: str = Field(default="{pipeline}", description="The prompt's name in the hub; may contain "
                             "{pipeline} and {scope}.")
    tag: str = Field(default="production", description="Commit tag given to the deployed version.")
    api_url: str | None = Field(default=None, description="API URL; default the `langsmith:` section's api_url, "
                                "else LANGSMITH_ENDPOINT, else https://api.smith.langchain.com.")
    api_key_env: str = Field(default="LANGSMITH_API_KEY", description="Environment variable holding the API key "
                             "(default: the `langsmith:` section's api_key_env); without it the target is skipped.")
    api_key_block: str | None = Field(default=None, description="Name of a 'LangSmith Credentials' Prefect block "
                                      "holding the API key, read through Prefect (default: the `langsmith:` "
                                      "section's api_key_block); takes precedence over api_key_env.")
    timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of each request to the hub (default: "
                                   "the `langsmith:` section's timeout_seconds).")


def _manifest(prompt: DeployedPrompt) -> dict[str, Any]:
    """The prompt as a serialized chat prompt template (mustache placeholders, like ours)."""

    def message(kind: str, text: str) -> dict[str, Any]:
        names = list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(text)))
        inner = {"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "prompt", "PromptTemplate"],
                 "kwargs": {"input_variables": names, "template": text, "template_format": "mustache"}}
        return {"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "chat", kind],
                "kwargs": {"prompt": inner}}

    messages = ([message("SystemMessagePromptTemplate", prompt.system)] if prompt.system else [])
    messages.append(message("HumanMessagePromptTemplate", prompt.template))
    return {"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "chat", "ChatPromptTemplate"],
            "kwargs": {"input_variables": list(prompt.variables), "messages": messages}}


@target_kinds.register("langsmith")
class LangSmithTarget(Target):
    """Pushes the prompt to the LangSmith prompt hub with a tag; skipped when no API key is set."""

    kind = "langsmith"
    Options = LangSmithOptions
    options: LangSmithOptions
    secret_env_option = "api_key_env"
    secret_block_option = "api_key_block"
    secret_block_type = "LangSmith Credentials"
    secret_required = False

    @classmethod
    def option_defaults(cls, config: Any, pipeline: str) -> dict[str, Any]:
        from promptcycle.config import effective_langsmith

        settings = effective_langsmith(config, pipeline)
        defaults: dict[str, Any] = {"api_key_env": settings.api_key_env, "api_key_block": settings.api_key_block,
                                    "timeout_seconds": settings.timeout_seconds}
        if settings.api_url:
            defaults["api_url"] = settings.api_url
        return defaults

    def _api_url(self) -> str:
        from promptcycle.langsmith.connection import api_url_of

        return api_url_of(self.options)

    def _name(self, prompt: DeployedPrompt) -> str:
        return self.options.prompt_name.replace("{pipeline}", prompt.pipeline).replace(
            "{scope}", prompt.scope or "all-models")

    def _hub(self):
        from promptcycle.deploy.hub import PromptHub

        return PromptHub(self._api_url(), self.secret, timeout_s=self.options.timeout_seconds)

    def _push(self, prompt: DeployedPrompt):
        import httpx2

        hub = self._hub()
        try:  # a dead endpoint fails fast, before anything is sent
            httpx2.get(f"{hub.api_url}/info", timeout=min(2.0, self.options.timeout_seconds)).raise_for_status()
        except httpx2.HTTPError as exc:
            raise TargetError(f"langsmith target {self.name!r}: {hub.api_url} is not reachable "
                              f"({type(exc).__name__}: {exc})") from None
        try:
            return hub.push(self._name(prompt), _manifest(prompt), tag=self.options.tag,
                            description=f"promptcycle version {prompt.version}")
        except TargetError as exc:
            raise TargetError(f"langsmith target {self.name!r}: push to {hub.api_url} failed: {exc}") from None

    def deploy(self, prompt: DeployedPrompt, previous: DeployedPrompt | None) -> Receipt:
        if self.secret is None:
            return Receipt(self.outcome("skipped", f"skipped: no LangSmith API key (set {self.options.api_key_env} "
                                                   "to push the production prompt to the prompt hub)"))
        pushed = self._push(prompt)
        created = " (the prompt was created)" if pushed.created_prompt else ""
        if not pushed.committed:
            return Receipt(self.outcome("written", f"version {prompt.version} is already the latest commit "
                                                   f"{pushed.ref}: tagged it {self.options.tag!r}"),
                           undo={"previous": previous, "pushed": pushed})
        return Receipt(self.outcome("written", f"pushed version {prompt.version} as commit {pushed.ref} tagged "
                                               f"{self.options.tag!r}{created}"),
                       undo={"previous": previous, "pushed": pushed})

    def restore(self, receipt: Receipt) -> TargetOutcome:
        if receipt.outcome.status == "skipped":
            return self.outcome("skipped", receipt.outcome.detail)
        previous: DeployedPrompt | None = receipt.undo["previous"]
        pushed = receipt.undo["pushed"]
        if previous is not None:
            again = self._push(previous)
            return self.outcome("restored", f"pushed version {previous.version} back as commit {again.ref} tagged "
                                            f"{self.options.tag!r}")
        if pushed.created_prompt:
            try:
                self._hub().delete_prompt(f"{pushed.owner}/{pushed.name}")
            except TargetError as exc:
                raise TargetError(f"could not delete the prompt {pushed.owner}/{pushed.name} this deployment "
                                  f"created: {exc}") from None
            return self.outcome("restored", f"deleted the prompt {pushed.owner}/{pushed.name} this deployment "
                                            "created")
        return self.outcome("restore_failed", f"no earlier version was pushed to {pushed.owner}/{pushed.name}, "
                                              f"which existed before: commit {pushed.ref} stays tagged "
                                              f"{self.options.tag!r}; move the tag in LangSmith by hand")


# -- building and applying --------------------------------------------------------------------------------------

def _secret(cls: type[Target], options: BaseModel, where: str, file: str | None,
            block_secret: SecretLookup | None) -> SecretStr | None:
    block = getattr(options, cls.secret_block_option, None) if cls.secret_block_option else None
    if block:
        if block_secret is None:
            raise ConfigError("credentials blocks are read through Prefect; run this through the deployment flow",
                              file=file, path=f"{where}.options.{cls.secret_block_option}", found=block)
        return block_secret(cls.secret_block_type, block)
    env = getattr(options, cls.secret_env_option, None) if cls.secret_env_option else None
    if not env:
        return None
    value = os.environ.get(env)
    if value:
        return SecretStr(value)
    if not cls.secret_required:
        return None
    raise ConfigError(f"environment variable {env} is not set", file=file,
                      path=f"{where}.options.{cls.secret_env_option}", found=env,
                      expected="a set environment variable holding the token")


def build_targets(config: Any, pipeline: str, *, block_secret: SecretLookup | None = None) -> list[Target]:
    """The targets of `pipelines.<pipeline>.deployment.targets`, with their secrets resolved.

    `config` is a `PromptcycleConfig`; relative paths resolve against its file. `block_secret`
    loads a credentials block by name (the tasks layer passes one that uses Prefect).
    """
    pipe = config.pipeline(pipeline)
    file = str(config.source_path) if config.source_path else None
    base_dir = config.source_path.parent if config.source_path else Path.cwd()
    built = []
    for i, entry in enumerate(pipe.deployment.targets):
        cls = target_kinds.get(entry.kind)
        options = cls.Options.model_validate({**cls.option_defaults(config, pipeline), **entry.options})
        where = f"pipelines.{pipeline}.deployment.targets.{i}"
        built.append(cls(entry.label, options, base_dir=base_dir,
                         secret=_secret(cls, options, where, file, block_secret)))
    return built


@dataclass
class Rollout:
    """The targets written by `apply_targets`, and how to put them back."""

    receipts: list[tuple[Target, Receipt]] = field(default_factory=list)

    @property
    def outcomes(self) -> list[TargetOutcome]:
        return [r.outcome for _, r in self.receipts]

    def undo(self) -> list[TargetOutcome]:
        """Restore every target, last written first; a target that cannot be restored is reported, not raised."""
        restored = []
        for target, receipt in reversed(self.receipts):
            try:
                restored.append(target.restore(receipt))
            except Exception as exc:  # noqa: BLE001 - keep restoring the others
                restored.append(target.outcome("restore_failed", f"could not restore: {exc}"))
        return restored[::-1]


def apply_targets(targets: Sequence[Target], prompt: DeployedPrompt,
                  previous: DeployedPrompt | None = None) -> Rollout:
    """Deploy `prompt` to every target, in order; all or nothing.

    When a target fails, the ones already written are restored and `TargetError` is raised with one
    outcome per target ('restored' / 'restore_failed', 'failed', 'not_run').
    """
    rollout = Rollout()
    for i, target in enumerate(targets):
        try:
            receipt = target.deploy(prompt, previous)
        except Exception as exc:  # noqa: BLE001 - any failure of a target aborts the whole deployment
            failure = target.outcome("failed", str(exc))
            restored = rollout.undo()
            outcomes = [*restored, failure, *(t.outcome("not_run", "not attempted") for t in targets[i + 1:])]
            broken = [o.target for o in restored if o.status == "restore_failed"]
            undone = (f"could NOT restore {', '.join(broken)} — check them by hand" if broken else
                      f"restored the {len(restored)} target(s) already written" if restored else
                      "no other target had been written")
            raise TargetError(f"deploying version {prompt.version} failed at target {target.name!r}: {exc}; "
                              f"{undone}", outcomes) from None
        rollout.receipts.append((target, receipt))
    return rollout
