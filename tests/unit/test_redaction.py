"""One redaction helper: no password of a URL survives into a message, whatever its shape."""

from __future__ import annotations

import pytest

from eventbus.redaction import redact, redact_url

MARK = "hunter2-marker"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("amqp://app:hunter2-marker@rabbit:5672//", "amqp://app:***@rabbit:5672//"),
        ("redis://:hunter2-marker@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://redis:6379/0?password=hunter2-marker", "redis://redis:6379/0?password=***"),
        (
            "postgresql+psycopg://app:hunter2-marker@db/app?sslmode=require&password=hunter2-marker",
            "postgresql+psycopg://app:***@db/app?sslmode=require&password=***",
        ),
        ("amqp://u:p@ss-hunter2-marker@h//", "amqp://u:***@h//"),  # an unencoded @
        ("amqp://a:hunter2-marker@h1//;amqp://a:hunter2-marker@h2//", "amqp://a:***@h1//;amqp://a:***@h2//"),
        ("foo://u:hunter2-marker@[::1/?PassWord=hunter2-marker", "foo://u:***@[::1/?PassWord=***"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("amqp://guest@rabbit//", "amqp://guest@rabbit//"),
        ("memory://", "memory://"),
        ("not a url at all", "not a url at all"),
    ],
)  # fmt: skip
def test_redact_url_masks_userinfo_and_query_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_masks_urls_and_named_secrets_in_free_text() -> None:
    url = "postgresql://app:hunter2%2Dmarker@db/app?password=other-secret"
    message = (
        "could not connect to postgresql://app:hunter2%2Dmarker@db/app?password=other-secret: "
        "password 'hunter2-marker' rejected; dsn: host=db password=third-secret user=app; "
        "other-secret again"
    )
    text = redact(message, [url])
    for secret in ("hunter2", "other-secret", "third-secret"):
        assert secret not in text
    assert "postgresql://app:***@db/app?password=***" in text
    assert "user=app" in text  # only the secrets go


def test_redact_leaves_short_secrets_alone_outside_urls() -> None:
    # "pw" would mask every "pw" in a message; a URL holding it is still masked.
    text = redact("amqp://u:pw@h// refused: pw", ["amqp://u:pw@h//"])
    assert text == "amqp://u:***@h// refused: pw"
