"""Outbound safety for callback URLs: no requests into the operator's network.

A URL is refused when its host is, or resolves to, an address that is not
publicly routable (private, loopback, link-local, unique-local, multicast,
unspecified, reserved) or a cloud metadata service, unless the operator's
allowlist names that host or a network holding the address. The check runs at
submit time and again at every delivery, and the delivery connects to the very
address it checked, so a DNS answer that changes in between (rebinding) cannot
redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from app.webhooks.settings import WebhookSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.tencentyun.com",
})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254",  # AWS (EC2, ECS), GCP, Azure IMDS
    "168.63.129.16",  # Azure wire server: publicly routable, so named explicitly
    "100.100.100.200",  # Alibaba Cloud
))


class RefusedURL(ValueError):
    """The callback URL may not be called; the message says why."""


class UnresolvableHost(RefusedURL):
    """DNS gave no answer: final at submit, but worth a retry at delivery."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"the host {host!r} could not be resolved ({exc})") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a well-formed http(s) URL, or RefusedURL."""
    if not isinstance(url, str) or not url:
        raise RefusedURL("the webhook must be a URL string")
    if len(url) > MAX_URL_LENGTH:
        raise RefusedURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedURL(f"the URL is malformed ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"only http and https URLs are allowed, not {parts.scheme or 'a relative URL'!r}")
    if not parts.hostname:
        raise RefusedURL("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL("credentials in the URL are not supported")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise RefusedURL("the URL contains whitespace or control characters")
    return parts.scheme, parts.hostname.lower().rstrip("."), port or (443 if parts.scheme == "https" else 80)


def forbidden_reason(address: Address) -> str | None:
    """Why this address may not be called, or None when it is public."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = forbidden_reason(embedded)
        return reason and f"{reason} (embedded in {address})"
    for test, reason in (("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"),
                         ("is_link_local", "a link-local"), ("is_multicast", "a multicast")):
        if getattr(address, test):
            return f"{reason} address"
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved or non-public address"
    return None


def check_url(url: str, settings: WebhookSettings, resolver: Resolver = system_resolver) -> list[str]:
    """The addresses the URL may be called at, after every check; RefusedURL otherwise."""
    _, host, port = split_url(url)
    if host in settings.allowed_hosts:
        return resolver(host, port)
    if host in METADATA_HOSTS:
        raise RefusedURL(f"{host!r} is a cloud metadata host")
    literal = _literal_address(host)
    addresses = [literal] if literal is not None else resolver(host, port)
    if not addresses:
        raise UnresolvableHost(f"the host {host!r} has no address")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        if any(address in network for network in settings.allowed_networks):
            continue
        reason = forbidden_reason(address)
        if reason is not None:
            what = f"the host {host!r} is" if literal is not None else f"{host!r} resolves to {address}, which is"
            raise RefusedURL(f"{what} {reason}; callbacks into private networks "
                             "need the operator's POOLQ_WEBHOOK_ALLOWLIST")
    return addresses


def _literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    # The legacy IPv4 spellings C resolvers accept: "127.1", "0x7f.0.0.1", "2130706433".
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, 6to4, NAT64, Teredo)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None
