"""Prefect blocks holding the credentials of alert channels.

Create one in the Prefect UI (Blocks → "Alert Webhook Credentials" / "SMTP Credentials") or in code:

    AlertWebhookCredentials(token="…", hmac_secret="…").save("ops-webhook")
    SmtpCredentials(username="alerts@example.com", password="…").save("ops-smtp")

and name it in pipelines.yaml under an alert channel's `options.credentials_block`. Secrets are
SecretStr: masked in the UI, in `prefect block inspect`, in reprs and in logs.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

__all__ = ["AlertWebhookCredentials", "SmtpCredentials"]


class AlertWebhookCredentials(Block):
    """The bearer token and/or HMAC signing secret an alert webhook channel sends with each page."""

    _block_type_name = "Alert Webhook Credentials"
    _block_type_slug = "promptcycle-alert-webhook-credentials"
    _description = "Token and signing secret promptcycle uses when it POSTs an alert to a webhook."

    token: SecretStr | None = Field(default=None, description="Sent as 'Authorization: Bearer <token>' (or in the "
                                    "channel's configured header); stored encrypted, never logged.")
    hmac_secret: SecretStr | None = Field(default=None, description="Shared secret of the HMAC-SHA256 body "
                                          "signature sent in X-Promptcycle-Signature; stored encrypted.")

    def get_credentials(self) -> dict[str, SecretStr | None]:
        return {"token": self.token, "hmac_secret": self.hmac_secret}


class SmtpCredentials(Block):
    """The login an alert email channel uses on its SMTP server."""

    _block_type_name = "SMTP Credentials"
    _block_type_slug = "promptcycle-smtp-credentials"
    _description = "SMTP username and password promptcycle uses to email alerts."

    username: str = Field(description="The SMTP login.")
    password: SecretStr = Field(description="The SMTP password; stored encrypted, never logged.")

    def get_credentials(self) -> dict[str, str | SecretStr]:
        return {"username": self.username, "password": self.password}
