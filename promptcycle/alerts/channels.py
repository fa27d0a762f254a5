"""Alert channels: where a page goes, behind one registry.

    channels = build_channels(config, "customer-insights", bridge=bridge)   # from `alerts.channels`
    detail = channels[0].send(message)        # raises AlertDeliveryError when the channel is down

Built-in kinds (options in docs/monitoring.md, "Alerts"):
- `console`: one line per page on stderr or stdout, or a record on the `promptcycle.alerts` logger;
- `file`: one JSON object per line, appended with a single write (O_APPEND) and flushed to disk;
- `webhook`: POSTs the message JSON with an `Idempotency-Key` header; a bearer token and/or an
  HMAC-SHA256 signing secret come from environment variables or an "Alert Webhook Credentials" block;
- `email`: SMTP (STARTTLS or TLS optional) with `Message-ID: <delivery id@promptcycle>`; the
  password comes from an environment variable or an "SMTP Credentials" block;
- `prefect_notification`: any Prefect notification block by name (Slack, Teams, email …);
- `prefect_event`: a Prefect event `promptcycle.alert.<kind>` (raised, repeated, escalated,
  recovered) whose resource is the pipeline, so Prefect automations can react.

The last two, and every credentials block, go through Prefect, which promptcycle/ does not import:
the caller passes a `ChannelBridge` (tasks/alerts.py has the Prefect one). Without it those
channels fail their delivery with a clear error, and the delivery stays pending for a pass that has it.

A channel sends once per call; retries and their back-off belong to the delivery pass
(promptcycle/alerts/delivery.py), which records every attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from promptcycle.alerts.messages import AlertMessage
from promptcycle.errors import AlertDeliveryError
from promptcycle.registry import Registry

__all__ = [
    "ChannelBridge",
    "Channel",
    "ConsoleChannel",
    "FileChannel",
    "WebhookChannel",
    "EmailChannel",
    "PrefectNotificationChannel",
    "PrefectEventChannel",
    "channel_kinds",
]

logger = logging.getLogger("promptcycle.alerts")


class ChannelBridge(Protocol):
    """What the channels need from Prefect (implemented in tasks/alerts.py)."""

    def credentials(self, block_type: str, name: str) -> dict[str, Any]:
        """The fields of credentials block `name` of `block_type` ('webhook' or 'smtp'); secrets as SecretStr."""

    def notify(self, block: str, subject: str, body: str) -> None:
        """Send through the Prefect notification block `block`."""

    def emit(self, event: str, resource: dict[str, str], payload: dict[str, Any]) -> str:
        """Emit a Prefect event; return its id."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Channel:
    """Base class: subclasses set `kind` and `Options` and implement `send`."""

    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = _Options

    def __init__(self, name: str, options: BaseModel, *, base_dir: Path | None = None,
                 bridge: ChannelBridge | None = None):
        self.name = name
        self.options = options
        self.base_dir = base_dir or Path.cwd()
        self.bridge = bridge

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def send(self, message: AlertMessage) -> str:
        """Deliver `message` once; return a sentence saying where it went. Raise AlertDeliveryError."""
        raise NotImplementedError

    def _needs_bridge(self, what: str) -> ChannelBridge:
        if self.bridge is None:
            raise AlertDeliveryError(f"{self.kind} channel {self.name!r}: {what} goes through Prefect; deliver "
                                     "with the monitor flow (tasks/alerts.py) to use it", retryable=False)
        return self.bridge

    def _secret(self, env: str | None, block: str | None, block_type: str, field: str) -> SecretStr | None:
        """A secret from credentials block `block` (field `field`) or else environment variable `env`."""
        if block:
            value = self._needs_bridge(f"credentials block {block!r}").credentials(block_type, block).get(field)
            if value is not None:
                return value if isinstance(value, SecretStr) else SecretStr(str(value))
        if env:
            value = os.environ.get(env)
            if not value:
                raise AlertDeliveryError(f"{self.kind} channel {self.name!r}: environment variable {env} is not set",
                                         retryable=False)
            return SecretStr(value)
        return None


channel_kinds: Registry[type[Channel]] = Registry("alert channel kind")


# -- console ------------------------------------------------------------------------------------------------------

class ConsoleOptions(_Options):
    stream: Literal["stderr", "stdout", "log"] = Field(default="stderr", description="Where the line goes: "
                                                       "stderr, stdout, or the `promptcycle.alerts` logger "
                                                       "(warning for high and critical, info below).")


@channel_kinds.register("console")
class ConsoleChannel(Channel):
    """One line per page: the subject and the alert id."""

    kind = "console"
    Options = ConsoleOptions
    options: ConsoleOptions

    def send(self, message: AlertMessage) -> str:
        line = f"promptcycle alert {message.alert_id}: {message.subject()}"
        if self.options.stream == "log":
            level = logging.WARNING if message.severity in ("high", "critical") else logging.INFO
            logger.log(level, line, extra={"promptcycle_alert": message.to_dict()})
        else:
            stream = sys.stderr if self.options.stream == "stderr" else sys.stdout
            print(line, file=stream, flush=True)
        return f"printed to {self.options.stream}"


# -- file ---------------------------------------------------------------------------------------------------------

class FileOptions(_Options):
    path: str = Field(description="The JSONL file pages are appended to (relative to pipelines.yaml); may "
                      "contain {pipeline}.")


@channel_kinds.register("file")
class FileChannel(Channel):
    """Appends the message JSON as one line, in one write to a file opened O_APPEND, then fsyncs it: lines
    from several processes never interleave and a line is whole or absent."""

    kind = "file"
    Options = FileOptions
    options: FileOptions

    def path_for(self, message: AlertMessage) -> Path:
        path = Path(self.options.path.replace("{pipeline}", message.pipeline)).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def send(self, message: AlertMessage) -> str:
        path = self.path_for(message)
        line = message.to_json() + b"\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AlertDeliveryError(f"file channel {self.name!r}: cannot append to {path}: "
                                     f"{exc.strerror or type(exc).__name__}") from None
        if written != len(line):
            raise AlertDeliveryError(f"file channel {self.name!r}: short write to {path} ({written} of {len(line)} "
                                     "bytes)")
        return f"appended to {path}"


# -- webhook ------------------------------------------------------------------------------------------------------

class WebhookOptions(_Options):
    url: str = Field(description="Where the message JSON is POSTed (http or https).")
    token_env: str | None = Field(default=None, description="Environment variable holding a bearer token.")
    hmac_secret_env: str | None = Field(default=None, description="Environment variable holding an HMAC-SHA256 "
                                        "signing secret (the body's signature goes in X-Promptcycle-Signature).")
    credentials_block: str | None = Field(default=None, description="Name of an 'Alert Webhook Credentials' "
                                          "Prefect block holding the token and/or signing secret (wins over the "
                                          "environment variables).")
    header: str = Field(default="Authorization", description="Header carrying the token ('Bearer <token>' for "
                        "Authorization, the bare token otherwise).")
    headers: dict[str, str] = Field(default_factory=dict, description="Other headers to send (no secrets here).")
    timeout_seconds: float = Field(default=5.0, gt=0, description="Timeout of one attempt.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the body under the shared secret (what X-Promptcycle-Signature holds)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@channel_kinds.register("webhook")
class WebhookChannel(Channel):
    """POSTs the message JSON; 2xx is delivered, 429/5xx/connection errors are worth retrying, other
    statuses are not (the delivery stays failed and is tried again by the next pass)."""

    kind = "webhook"
    Options = WebhookOptions
    options: WebhookOptions

    def _secrets(self) -> tuple[SecretStr | None, SecretStr | None]:
        o = self.options
        if o.credentials_block:
            fields = self._needs_bridge(f"credentials block {o.credentials_block!r}").credentials(
                "webhook", o.credentials_block)
            token, key = fields.get("token"), fields.get("hmac_secret")
            return (token if token is None or isinstance(token, SecretStr) else SecretStr(str(token)),
                    key if key is None or isinstance(key, SecretStr) else SecretStr(str(key)))
        return self._secret(o.token_env, None, "webhook", "token"), self._secret(o.hmac_secret_env, None, "webhook",
                                                                                 "hmac_secret")

    def send(self, message: AlertMessage) -> str:
        import httpx2

        from promptcycle.providers import parse_retry_after

        o = self.options
        token, key = self._secrets()
        secrets = [s.get_secret_value() for s in (token, key) if s is not None and s.get_secret_value()]

        def scrub(text: str) -> str:
            for secret in secrets:
                text = text.replace(secret, "***")
            return text

        body = message.to_json()
        headers = {"content-type": "application/json", "idempotency-key": message.delivery_id,
                   "x-promptcycle-event": message.kind, "x-promptcycle-severity": message.severity, **o.headers}
        if token is not None:
            headers[o.header] = (f"Bearer {token.get_secret_value()}" if o.header.lower() == "authorization"
                                 else token.get_secret_value())
        if key is not None:
            headers["x-promptcycle-signature"] = signature(key.get_secret_value(), body)
        try:
            with httpx2.Client(timeout=o.timeout_seconds, follow_redirects=False) as client:
                response = client.post(o.url, content=body, headers=headers)
        except httpx2.TransportError as exc:
            raise AlertDeliveryError(scrub(f"webhook channel {self.name!r}: {o.url}: {type(exc).__name__}: {exc}"),
                                     retryable=True) from None
        if 200 <= response.status_code < 300:
            return f"POSTed to {o.url} (HTTP {response.status_code})"
        problem = f"HTTP {response.status_code}: {response.text[:200].strip() or '(empty body)'}"
        retryable = response.status_code == 429 or response.status_code >= 500
        raise AlertDeliveryError(scrub(f"webhook channel {self.name!r}: {o.url} answered {problem}"),
                                 retryable=retryable, retry_after=parse_retry_after(response.headers.get("retry-after")))


# -- email --------------------------------------------------------------------------------------------------------

class EmailOptions(_Options):
    host: str = Field(description="SMTP server host.")
    port: int = Field(default=25, ge=1, le=65535, description="SMTP port (587 with starttls, 465 with ssl).")
    starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS before logging in.")
    ssl: bool = Field(default=False, description="Connect over TLS from the start (SMTPS).")
    from_addr: str = Field(description="The From address.")
    to: list[str] = Field(min_length=1, description="Recipients.")
    username: str | None = Field(default=None, description="SMTP login (no login when neither this nor a block "
                                 "gives one).")
    password_env: str | None = Field(default=None, description="Environment variable holding the SMTP password.")
    credentials_block: str | None = Field(default=None, description="Name of an 'SMTP Credentials' Prefect block "
                                          "holding the username and password (wins over username/password_env).")
    ca_file: str | None = Field(default=None, description="PEM file of the CA that signed the server's "
                                "certificate, for a private CA (relative to pipelines.yaml); default: the system's.")
    timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of the SMTP conversation.")


@channel_kinds.register("email")
class EmailChannel(Channel):
    """Sends the message as a plain-text email whose Message-ID is the delivery id."""

    kind = "email"
    Options = EmailOptions
    options: EmailOptions

    def _login(self) -> tuple[str | None, SecretStr | None]:
        o = self.options
        if o.credentials_block:
            fields = self._needs_bridge(f"credentials block {o.credentials_block!r}").credentials(
                "smtp", o.credentials_block)
            password = fields.get("password")
            return (fields.get("username") or o.username,
                    password if password is None or isinstance(password, SecretStr) else SecretStr(str(password)))
        return o.username, self._secret(o.password_env, None, "smtp", "password")

    def send(self, message: AlertMessage) -> str:
        import smtplib
        import ssl
        from email.message import EmailMessage
        from email.utils import format_datetime

        o = self.options
        username, password = self._login()
        mail = EmailMessage()
        mail["Subject"] = message.subject()
        mail["From"] = o.from_addr
        mail["To"] = ", ".join(o.to)
        mail["Date"] = format_datetime(message.occurred_at)
        mail["Message-ID"] = f"<{message.delivery_id}@promptcycle>"
        mail["X-Promptcycle-Alert"] = str(message.alert_id)
        mail.set_content(message.body())
        ca_file = None
        if o.ca_file:
            ca_file = Path(o.ca_file).expanduser()
            ca_file = ca_file if ca_file.is_absolute() else self.base_dir / ca_file
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise AlertDeliveryError(f"email channel {self.name!r}: cannot read ca_file {ca_file}: {exc}",
                                     retryable=False) from None
        secret = password.get_secret_value() if password is not None else ""
        try:
            if o.ssl:
                client = smtplib.SMTP_SSL(o.host, o.port, timeout=o.timeout_seconds, context=context)
            else:
                client = smtplib.SMTP(o.host, o.port, timeout=o.timeout_seconds)
            with client:
                if o.starttls and not o.ssl:
                    client.starttls(context=context)
                if username and password is not None:
                    client.login(username, secret)
                refused = client.send_message(mail)
        except smtplib.SMTPAuthenticationError as exc:
            raise AlertDeliveryError(f"email channel {self.name!r}: {o.host}:{o.port} refused the login "
                                     f"({exc.smtp_code})", retryable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            raise AlertDeliveryError(f"email channel {self.name!r}: {o.host}:{o.port}: "
                                     f"{text.replace(secret, '***') if secret else text}", retryable=True) from None
        if refused:
            raise AlertDeliveryError(f"email channel {self.name!r}: recipients refused: {', '.join(refused)}",
                                     retryable=False)
        return f"emailed {', '.join(o.to)} via {o.host}:{o.port}"


# -- through Prefect ----------------------------------------------------------------------------------------------

class PrefectNotificationOptions(_Options):
    block: str = Field(description="A saved Prefect notification block as '<block type slug>/<name>', e.g. "
                       "'slack-webhook/ops' or 'ms-teams-webhook/on-call' (`prefect block ls` lists them).")

    @field_validator("block")
    @classmethod
    def _slug_and_name(cls, v: str) -> str:
        slug, _, name = v.partition("/")
        if not slug or not name:
            raise ValueError("block must be '<block type slug>/<name>', e.g. 'slack-webhook/ops'")
        return v


@channel_kinds.register("prefect_notification")
class PrefectNotificationChannel(Channel):
    """`NotificationBlock.load(block).notify(body, subject)`, through the bridge."""

    kind = "prefect_notification"
    Options = PrefectNotificationOptions
    options: PrefectNotificationOptions

    def send(self, message: AlertMessage) -> str:
        bridge = self._needs_bridge(f"notification block {self.options.block!r}")
        bridge.notify(self.options.block, message.subject(), message.body())
        return f"notified through Prefect block {self.options.block!r}"


class PrefectEventOptions(_Options):
    event_prefix: str = Field(default="promptcycle.alert", description="Events are named "
                              "'<prefix>.<kind>': raised, repeated, escalated or recovered.")


@dataclass(frozen=True)
class _EventSpec:
    name: str
    resource: dict[str, str]
    payload: dict[str, Any]


def event_spec(message: AlertMessage, prefix: str = "promptcycle.alert") -> _EventSpec:
    """The Prefect event of a message: resource = the pipeline, labelled with model, spectrum, severity."""
    resource = {"prefect.resource.id": f"promptcycle.pipeline.{message.pipeline}",
                "prefect.resource.name": message.pipeline, "promptcycle.pipeline": message.pipeline,
                "promptcycle.model": message.model, "promptcycle.spectrum": message.spectrum,
                "promptcycle.detector": message.detector, "promptcycle.severity": message.severity}
    return _EventSpec(f"{prefix}.{message.kind}", resource, message.to_dict())


@channel_kinds.register("prefect_event")
class PrefectEventChannel(Channel):
    """Emits `promptcycle.alert.<kind>` for Prefect automations (e.g. trigger a deployment on high severity)."""

    kind = "prefect_event"
    Options = PrefectEventOptions
    options: PrefectEventOptions

    def send(self, message: AlertMessage) -> str:
        bridge = self._needs_bridge("a Prefect event")
        spec = event_spec(message, self.options.event_prefix)
        event_id = bridge.emit(spec.name, spec.resource, spec.payload)
        return f"emitted {spec.name} ({event_id})"
