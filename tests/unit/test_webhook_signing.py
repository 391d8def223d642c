"""Standard Webhooks signing, checked against the `standardwebhooks` reference library."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.tenants.services import new_webhook_secret
from app.webhooks.signing import SigningSecrets, sign, signed_headers
from app.webhooks.settings import STANDARD_RETRY_SCHEDULE, webhook_settings

BODY = json.dumps({"type": "job.completed", "id": "0b6f", "status": "succeeded", "text": "caf\u00e9 \u0000"})


def test_a_signature_verifies_with_the_reference_library():
    secret = new_webhook_secret()
    headers = signed_headers([secret], "msg_abc", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_signature_matches_the_specification_example():
    # The example in the Standard Webhooks specification (its secret, id, timestamp and body).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_every_signature_verifies_during_a_rotation():
    old, new = new_webhook_secret(), new_webhook_secret()
    headers = signed_headers([new, old], "msg_rot", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(BODY, headers)


def test_a_tampered_body_or_id_fails_verification():
    secret = new_webhook_secret()
    headers = signed_headers([secret], "msg_x", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("succeeded", "failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_y"})


def test_the_previous_secret_signs_only_within_the_grace_period():
    rotated = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    secrets = SigningSecrets("whsec_new", "whsec_old", rotated)
    assert secrets.active(rotated + dt.timedelta(seconds=59), grace_s=60) == ["whsec_new", "whsec_old"]
    assert secrets.active(rotated + dt.timedelta(seconds=60), grace_s=60) == ["whsec_new"]
    # SQLite hands back naive datetimes: they are UTC.
    naive = SigningSecrets("whsec_new", "whsec_old", rotated.replace(tzinfo=None))
    assert naive.active(rotated, grace_s=60) == ["whsec_new", "whsec_old"]
    assert SigningSecrets("whsec_new").active(rotated, grace_s=60) == ["whsec_new"]


def test_new_secrets_are_32_random_bytes():
    secret = new_webhook_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert secret != new_webhook_secret()


def test_settings_default_to_the_standard_schedule_and_read_overrides():
    assert webhook_settings({}).retry_schedule == STANDARD_RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000,
                                                                               36000, 36000)
    settings = webhook_settings({"POOLQ_WEBHOOK_RETRY_SCHEDULE": "0, 0.5,1", "POOLQ_WEBHOOK_SECRET_GRACE_S": "5",
                                 "POOLQ_WEBHOOK_ALLOWLIST": "127.0.0.1, hooks.internal,10.0.0.0/8"})
    assert settings.retry_schedule == (0, 0.5, 1) and settings.secret_grace_s == 5
    assert settings.allowed_hosts == {"hooks.internal"} and len(settings.allowed_networks) == 2


@pytest.mark.parametrize("env", [{"POOLQ_WEBHOOK_RETRY_SCHEDULE": "1,soon"}, {"POOLQ_WEBHOOK_RETRY_SCHEDULE": "-1"},
                                 {"POOLQ_WEBHOOK_ALLOWLIST": "10.0.0.0/33"}, {"POOLQ_WEBHOOK_READ_TIMEOUT_S": "x"}])
def test_bad_settings_are_refused(env):
    from app.config import SettingsError

    with pytest.raises(SettingsError):
        webhook_settings(env)
