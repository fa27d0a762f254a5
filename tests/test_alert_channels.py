"""Alert channels against real local servers, and delivery passes: a channel that is down loses nothing
and doubles nothing."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from simserver import ServerThread

from promptcycle.alerts import build_channels, deliver_alerts, deliver_pending, process_findings
from promptcycle.alerts.channels import EmailChannel, FileChannel, WebhookChannel, signature
from promptcycle.alerts.messages import AlertMessage
from promptcycle.alerts.policy import Finding
from promptcycle.config import AlertChannelConfig, load_config
from promptcycle.errors import AlertDeliveryError
from promptcycle.store import MetricsStore

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
PIPE = "customer-insights"
TOKEN = "tok-5ecret-value"
HMAC_KEY = "hmac-5ecret-key"


class Receiver:
    """An ASGI webhook receiver: answers `fail_first` requests with 503, then 200; keeps every request."""

    def __init__(self, fail_first: int = 0, status: int = 503):
        self.fail_first, self.status = fail_first, status
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self.lock:
            self.requests.append({"headers": {k.decode(): v.decode() for k, v in scope["headers"]}, "body": body})
            failing = len(self.requests) <= self.fail_first
        status = self.status if failing else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"down" if failing else b"ok"})

    def delivered(self) -> list[dict]:
        """The requests answered 200."""
        return self.requests[self.fail_first:]


def finding(severity="high", in_control=False, spectrum="credit_analysis") -> Finding:
    return Finding("cusum", PIPE, "xl", spectrum, severity, in_control, 5.0, "quality fell 6 points", {"drop": 0.06})


def with_channels(config_path: Path, channels: list[dict]):
    config = load_config(config_path)
    return config.model_copy(update={"alerts": config.alerts.model_copy(update={
        "channels": [AlertChannelConfig(**c) for c in channels]})})


def no_sleep(_seconds: float) -> None:
    pass


def message(**changes) -> AlertMessage:
    fields = dict(delivery_id="ev1.ops", event_id="ev1", alert_id=7, kind="raised", severity="high", pipeline=PIPE,
                  model="xl", spectrum="credit_analysis", detector="cusum", message="quality fell 6 points",
                  reason="first page of this key", occurred_at=T0, first_seen=T0, occurrences=1,
                  evidence={"drop": 0.06})
    return AlertMessage(**(fields | changes))


# -- webhook --------------------------------------------------------------------------------------------------------

def test_webhook_sends_json_with_idempotency_key_bearer_token_and_hmac_signature(monkeypatch):
    monkeypatch.setenv("ALERT_TOKEN", TOKEN)
    monkeypatch.setenv("ALERT_HMAC", HMAC_KEY)
    receiver = Receiver()
    with ServerThread(app=receiver, lifespan="off") as server:
        channel = WebhookChannel("ops", WebhookChannel.Options(
            url=f"http://127.0.0.1:{server.port}/hook", token_env="ALERT_TOKEN", hmac_secret_env="ALERT_HMAC"))
        detail = channel.send(message())
    [request] = receiver.requests
    body = json.loads(request["body"])
    assert "HTTP 200" in detail
    assert (body["format"], body["alert_id"], body["severity"], body["spectrum"]) == (
        "promptcycle.alert/1", 7, "high", "credit_analysis")
    assert request["headers"]["idempotency-key"] == "ev1.ops"
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["x-promptcycle-signature"] == signature(HMAC_KEY, request["body"])


def test_webhook_errors_say_whether_to_retry_and_never_show_the_token(monkeypatch):
    monkeypatch.setenv("ALERT_TOKEN", TOKEN)

    class Echo(Receiver):  # a receiver that echoes the auth header back in its error body
        async def __call__(self, scope, receive, send):
            await receive()
            auth = dict(scope["headers"]).get(b"authorization", b"")
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": b"bad token " + auth})

    for status, retryable in ((401, False), (503, True), (429, True)):
        with ServerThread(app=Echo(status=status), lifespan="off") as server:
            channel = WebhookChannel("ops", WebhookChannel.Options(url=f"http://127.0.0.1:{server.port}/",
                                                                   token_env="ALERT_TOKEN"))
            with pytest.raises(AlertDeliveryError) as caught:
                channel.send(message())
        assert caught.value.retryable is retryable and str(status) in str(caught.value)
        assert TOKEN not in str(caught.value) and "***" in str(caught.value)


def test_a_webhook_that_is_down_loses_nothing_and_doubles_nothing(repo_config, tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    receiver = Receiver(fail_first=5)
    with ServerThread(app=receiver, lifespan="off") as server:
        config = with_channels(repo_config, [{"kind": "webhook", "name": "ops",
                                              "options": {"url": f"http://127.0.0.1:{server.port}/hook"}}])
        process_findings(store, config, PIPE, [finding("high", spectrum="a"), finding("critical", spectrum="b")], T0)
        channels = build_channels(config, PIPE)

        first = deliver_pending(store, channels, T0, attempts_per_pass=3, sleep=no_sleep)
        # The first delivery failed its 3 attempts; the channel is down, so the second waits for the next pass.
        assert (len(first.sent), len(first.failed), len(first.released)) == (0, 1, 1)
        failed = {d.delivery_id: d for d in store.alert_deliveries()}
        assert sorted((d.state, d.attempts) for d in failed.values()) == [("failed", 0), ("failed", 3)]
        assert all("503" in d.last_error for d in failed.values())

        second = deliver_pending(store, channels, T0 + timedelta(minutes=30), attempts_per_pass=3, sleep=no_sleep)
        assert (len(second.sent), len(second.failed)) == (2, 0)
        third = deliver_pending(store, channels, T0 + timedelta(minutes=60), attempts_per_pass=3, sleep=no_sleep)
        assert (third.sent, third.failed, third.released) == ([], [], [])

    delivered = [r["headers"]["idempotency-key"] for r in receiver.delivered()]
    rows = store.alert_deliveries()
    assert sorted(delivered) == sorted(d.delivery_id for d in rows)  # each page received exactly once
    assert len(receiver.requests) == 5 + 2
    assert all(d.state == "sent" and d.sent_at == T0 + timedelta(minutes=30) for d in rows)
    assert sorted(d.attempts for d in rows) == [1, 3 + 3]  # 3 failed + 2 failed, 1 ok; and the one released once


def test_two_delivery_passes_at_once_send_each_page_once(repo_config, tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    receiver = Receiver()
    with ServerThread(app=receiver, lifespan="off") as server:
        config = with_channels(repo_config, [{"kind": "webhook", "name": "ops",
                                              "options": {"url": f"http://127.0.0.1:{server.port}/hook"}}])
        process_findings(store, config, PIPE, [finding(spectrum=f"s{i}") for i in range(8)], T0)
        channels = build_channels(config, PIPE)
        threads = [threading.Thread(target=deliver_pending, args=(store, channels, T0)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    keys = [r["headers"]["idempotency-key"] for r in receiver.requests]
    assert len(keys) == len(set(keys)) == 8


def test_a_pass_that_died_mid_send_is_taken_over_after_its_lease(repo_config, tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    config = with_channels(repo_config, [{"kind": "file", "options": {"path": "pages.jsonl"}}])
    process_findings(store, config, PIPE, [finding()], T0)
    assert len(store.claim_deliveries(["file"], T0, lease_seconds=60)) == 1  # claimed, then the process "died"
    assert deliver_pending(store, build_channels(config, PIPE), T0 + timedelta(seconds=30)).sent == []
    report = deliver_pending(store, build_channels(config, PIPE), T0 + timedelta(seconds=61))
    assert len(report.sent) == 1


# -- email ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received = []

    class Keep(Message):
        def handle_message(self, message):
            received.append(message)

    from simserver import unused_port

    controller = Controller(Keep(), hostname="127.0.0.1", port=unused_port())
    controller.start()
    try:
        yield controller, received
    finally:
        controller.stop()


def test_email_reaches_a_local_smtp_server_with_the_delivery_id_as_message_id(smtp_server, repo_config, tmp_path):
    controller, received = smtp_server
    port = controller.port
    store = MetricsStore(tmp_path / "metrics.duckdb")
    config = with_channels(repo_config, [{"kind": "email", "name": "ops-mail", "min_severity": "high", "options": {
        "host": "127.0.0.1", "port": port, "from_addr": "promptcycle@example.com", "to": ["oncall@example.com"]}}])
    process_findings(store, config, PIPE, [finding("critical"), finding("low", spectrum="quiet")], T0)
    report = deliver_alerts(store, config, PIPE, T0, sleep=no_sleep)
    assert len(report.sent) == 1
    [mail] = received
    [delivery] = store.alert_deliveries(state="sent")
    assert mail["Message-ID"] == f"<{delivery.delivery_id}@promptcycle>"
    assert mail["Subject"].startswith(f"[CRITICAL] {PIPE}: xl/credit_analysis (cusum)")
    assert mail["To"] == "oncall@example.com"
    assert "promptcycle alerts ack 1" in mail.get_payload()


def test_email_to_a_server_that_is_down_is_retried_by_the_next_pass(repo_config, tmp_path):
    from simserver import unused_port

    port = unused_port()
    store = MetricsStore(tmp_path / "metrics.duckdb")
    config = with_channels(repo_config, [{"kind": "email", "options": {
        "host": "127.0.0.1", "port": port, "from_addr": "a@example.com", "to": ["b@example.com"],
        "timeout_seconds": 2}}])
    process_findings(store, config, PIPE, [finding()], T0)
    report = deliver_alerts(store, config, PIPE, T0, sleep=no_sleep)
    assert len(report.failed) == 1 and "refused" in report.failed[0]["error"].lower()
    [delivery] = store.alert_deliveries()
    assert (delivery.state, delivery.attempts) == ("failed", 3)


def test_email_password_comes_from_the_environment_and_a_missing_one_fails_clearly(repo_config, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    channel = EmailChannel("mail", EmailChannel.Options(host="127.0.0.1", from_addr="a@x", to=["b@x"],
                                                        username="bot", password_env="SMTP_PASSWORD"))
    with pytest.raises(AlertDeliveryError, match="SMTP_PASSWORD is not set") as caught:
        channel.send(message())
    assert caught.value.retryable is False


# -- file and console ---------------------------------------------------------------------------------------------

def test_file_channel_appends_one_json_line_per_page(repo_config, tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    config = with_channels(repo_config, [{"kind": "file", "options": {"path": "alerts/{pipeline}.jsonl"}}])
    process_findings(store, config, PIPE, [finding("high")], T0)
    process_findings(store, config, PIPE, [finding(in_control=True)], T0 + timedelta(hours=1))
    assert len(deliver_pending(store, build_channels(config, PIPE), T0 + timedelta(hours=1)).sent) == 2
    lines = (repo_config.parent / "alerts" / f"{PIPE}.jsonl").read_text().splitlines()
    pages = [json.loads(line) for line in lines]
    assert [(p["kind"], p["severity"]) for p in pages] == [("raised", "high"), ("recovered", "high")]
    assert len({p["delivery_id"] for p in pages}) == 2


def test_file_lines_from_many_writers_never_interleave(tmp_path):
    channel = FileChannel("f", FileChannel.Options(path=str(tmp_path / "pages.jsonl")))
    big = {"blob": "x" * 20000}

    def write(n: int) -> None:
        for i in range(25):
            channel.send(message(delivery_id=f"{n}-{i}", evidence=big))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "pages.jsonl").read_text().splitlines()
    assert len(lines) == 100 and len({json.loads(line)["delivery_id"] for line in lines}) == 100


def test_prefect_channels_without_the_bridge_stay_pending_with_a_clear_error(repo_config, tmp_path):
    store = MetricsStore(tmp_path / "metrics.duckdb")
    config = with_channels(repo_config, [{"kind": "prefect_event"}])
    process_findings(store, config, PIPE, [finding()], T0)
    report = deliver_alerts(store, config, PIPE, T0, sleep=no_sleep)
    assert "goes through Prefect" in report.failed[0]["error"] and report.failed[0]["attempts"] == 1
    [delivery] = store.alert_deliveries()
    assert delivery.state == "failed"


def test_email_over_starttls_logs_in_with_the_password_from_the_environment(repo_config, tmp_path, monkeypatch):
    import ssl

    import trustme
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message
    from aiosmtpd.smtp import AuthResult, LoginPassword
    from simserver import unused_port

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    logins, received = [], []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"bot", b"s3cret-pw")
        logins.append((session.ssl is not None, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    class Keep(Message):
        def handle_message(self, message):
            received.append(message)

    controller = Controller(Keep(), hostname="127.0.0.1", port=unused_port(), tls_context=server_context,
                            require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    try:
        store = MetricsStore(tmp_path / "metrics.duckdb")
        options = {"host": "127.0.0.1", "port": controller.port, "starttls": True, "ca_file": str(tmp_path / "ca.pem"),
                   "from_addr": "promptcycle@example.com", "to": ["oncall@example.com"], "username": "bot",
                   "password_env": "SMTP_PASSWORD"}
        config = with_channels(repo_config, [{"kind": "email", "options": options}])
        process_findings(store, config, PIPE, [finding("critical")], T0)

        monkeypatch.setenv("SMTP_PASSWORD", "wrong-pw")
        refused = deliver_alerts(store, config, PIPE, T0, sleep=no_sleep)
        assert refused.failed[0]["attempts"] == 1 and "refused the login" in refused.failed[0]["error"], refused
        assert "wrong-pw" not in refused.failed[0]["error"]

        monkeypatch.setenv("SMTP_PASSWORD", "s3cret-pw")
        sent = deliver_alerts(store, config, PIPE, T0 + timedelta(minutes=1), sleep=no_sleep)
        assert len(sent.sent) == 1
    finally:
        controller.stop()
    # smtplib tries each mechanism the server offers (PLAIN, LOGIN) before giving up; all over TLS.
    assert all(tls for tls, _ in logins) and [ok for _, ok in logins] == [False] * (len(logins) - 1) + [True]
    [mail] = received
    assert mail["Subject"].startswith("[CRITICAL]")
    [delivery] = store.alert_deliveries()
    assert (delivery.state, delivery.attempts) == ("sent", 2)
    assert "s3cret-pw" not in (delivery.detail or "") + (delivery.last_error or "")
