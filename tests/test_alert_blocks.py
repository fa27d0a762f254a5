"""The credentials blocks of alert channels: every field described, secrets masked wherever they show."""

from __future__ import annotations

import pytest

from blocks.channels import AlertWebhookCredentials, SmtpCredentials


@pytest.mark.parametrize("block", [AlertWebhookCredentials(token="tok-123", hmac_secret="mac-456"),
                                   SmtpCredentials(username="bot", password="pw-789")])
def test_alert_credentials_blocks_describe_their_fields_and_mask_their_secrets(block):
    cls = type(block)
    assert cls._description and cls._block_type_slug.startswith("promptcycle-")
    assert all(field.description for field in cls.model_fields.values())
    shown = repr(block) + str(block) + block.model_dump_json()
    for secret in ("tok-123", "mac-456", "pw-789"):
        assert secret not in shown
    creds = block.get_credentials()
    revealed = {k: v.get_secret_value() if hasattr(v, "get_secret_value") else v for k, v in creds.items()}
    assert set(revealed.values()) & {"tok-123", "pw-789"}
