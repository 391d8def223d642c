"""Webhook settings: `Settings.webhooks`, parsed from POOLQ_WEBHOOK_* by
`webhook_settings(env)` when `Settings.from_env` runs (never at import)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.config import SettingsError

# The Standard Webhooks schedule: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
STANDARD_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class WebhookSettings:
    # Delay before each attempt of a cycle; its length is the number of attempts.
    retry_schedule: tuple[float, ...] = STANDARD_RETRY_SCHEDULE
    # Each delay is stretched or shrunk by up to this fraction, so endpoints
    # that fail together are not retried in lockstep.
    retry_jitter: float = 0.1
    # Operator-trusted callback targets: host names, and addresses or CIDRs.
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[Network, ...] = field(default=())
    # After a rotation, deliveries are signed with the previous secret too for this long.
    secret_grace_s: float = 86400.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    # A pending delivery overdue by this much has lost its broker message (or
    # its worker): the sweeper sends it again.
    requeue_after_s: float = 60.0


def webhook_settings(env: Mapping[str, str]) -> WebhookSettings:
    hosts, networks = parse_allowlist(env.get("POOLQ_WEBHOOK_ALLOWLIST", ""))
    defaults = WebhookSettings()
    return WebhookSettings(
        retry_schedule=_schedule(env.get("POOLQ_WEBHOOK_RETRY_SCHEDULE")) or defaults.retry_schedule,
        retry_jitter=_number(env, "POOLQ_WEBHOOK_RETRY_JITTER", defaults.retry_jitter),
        allowed_hosts=hosts,
        allowed_networks=networks,
        secret_grace_s=_number(env, "POOLQ_WEBHOOK_SECRET_GRACE_S", defaults.secret_grace_s),
        connect_timeout_s=_number(env, "POOLQ_WEBHOOK_CONNECT_TIMEOUT_S", defaults.connect_timeout_s),
        read_timeout_s=_number(env, "POOLQ_WEBHOOK_READ_TIMEOUT_S", defaults.read_timeout_s),
        requeue_after_s=_number(env, "POOLQ_WEBHOOK_REQUEUE_AFTER_S", defaults.requeue_after_s),
    )


def parse_allowlist(raw: str) -> tuple[frozenset[str], tuple[Network, ...]]:
    hosts: set[str] = set()
    networks: list[Network] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            if "/" in entry:
                raise SettingsError(f"POOLQ_WEBHOOK_ALLOWLIST: {entry!r} is not a valid CIDR") from None
            hosts.add(entry.lower().rstrip("."))
    return frozenset(hosts), tuple(networks)


def _schedule(raw: str | None) -> tuple[float, ...] | None:
    if not raw or not raw.strip():
        return None
    try:
        delays = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise SettingsError(f"POOLQ_WEBHOOK_RETRY_SCHEDULE={raw!r}: expected comma-separated seconds") from None
    if any(d < 0 for d in delays):
        raise SettingsError(f"POOLQ_WEBHOOK_RETRY_SCHEDULE={raw!r}: delays cannot be negative")
    return delays


def _number(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a number") from None
    if value < 0:
        raise SettingsError(f"{key}={raw!r} cannot be negative")
    return value
