"""Who may call the API: one bearer token, compared in constant time; no token only on loopback.

The token is held as a `SecretStr` and never written anywhere: not in logs (uvicorn's access log
shows paths, not headers), not in error bodies, not in the store.
"""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr

__all__ = ["BearerToken", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1 and `localhost`."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or 0.0.0.0, which is every interface) is not loopback


class BearerToken:
    """The token requests must carry as `Authorization: Bearer <token>`."""

    def __init__(self, token: SecretStr):
        value = token.get_secret_value()
        if not value.strip():
            raise ValueError("the API token is empty")
        self._expected = value.encode("utf-8")

    def __repr__(self) -> str:
        return "BearerToken('**********')"

    def accepts(self, authorization: str | None) -> bool:
        """True if the `Authorization` header value carries the token (the comparison takes the same time
        wherever the first differing byte is)."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self._expected)
