"""Callback URLs into private networks are refused, unless the operator allows them."""

from __future__ import annotations

import pytest

from app.webhooks.settings import webhook_settings
from app.webhooks.ssrf import RefusedURL, UnresolvableHost, check_url

NO_ALLOWLIST = webhook_settings({})


def resolver_for(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise UnresolvableHost(f"the host {host!r} could not be resolved")
        return table[host]
    return resolve


PUBLIC = resolver_for({"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})


@pytest.mark.parametrize("url,why", [
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.9/hook", "private"),
    ("https://192.168.1.20:8443/hook", "private"),
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("http://127.1/hook", "loopback"),  # legacy short and hex forms
    ("http://0x7f000001/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),  # IPv4-mapped IPv6
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://169.254.10.10/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd12:3456::1]/", "unique-local"),
    ("http://224.0.0.251/", "multicast"),
    ("http://0.0.0.0:8000/", "unspecified"),
    ("http://100.64.1.1/", "non-public"),  # carrier-grade NAT
])
def test_private_loopback_link_local_and_metadata_addresses_are_refused(url, why):
    with pytest.raises(RefusedURL, match=why):
        check_url(url, NO_ALLOWLIST, PUBLIC)


def test_a_hostname_that_resolves_to_a_private_address_is_refused():
    rebinding = resolver_for({"innocent.example.com": ["93.184.215.14", "10.0.0.7"]})
    with pytest.raises(RefusedURL, match=r"resolves to 10\.0\.0\.7, which is a private address"):
        check_url("https://innocent.example.com/hook", NO_ALLOWLIST, rebinding)


def test_localhost_is_refused_through_the_real_resolver():
    with pytest.raises(RefusedURL, match="'localhost' resolves to .*loopback"):
        check_url("http://localhost:8080/hook", NO_ALLOWLIST)


@pytest.mark.parametrize("url,why", [
    ("ftp://hooks.example.com/x", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://hooks.example.com/", "only http and https"),
    ("hooks.example.com/hook", "only http and https"),
    ("http:///hook", "no host"),
    ("https://user:secret@hooks.example.com/", "credentials"),
    ("http://hooks.example.com:99999/", "malformed"),
    ("http://hooks.example.com/a b", "whitespace"),
    ("http://hooks.example.com/" + "a" * 2100, "longer than"),
])
def test_malformed_and_non_http_urls_are_refused(url, why):
    with pytest.raises(RefusedURL, match=why):
        check_url(url, NO_ALLOWLIST, PUBLIC)


def test_an_unresolvable_host_is_refused():
    with pytest.raises(UnresolvableHost):
        check_url("https://nowhere.example.com/", NO_ALLOWLIST, PUBLIC)


def test_public_hosts_pass_with_every_address():
    assert check_url("https://hooks.example.com/poolq?x=1", NO_ALLOWLIST, PUBLIC) == [
        "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    assert check_url("http://8.8.8.8/", NO_ALLOWLIST, PUBLIC) == ["8.8.8.8"]


def test_the_operator_allowlist_permits_hosts_and_networks():
    settings = webhook_settings({"POOLQ_WEBHOOK_ALLOWLIST": "127.0.0.1,hooks.internal,10.20.0.0/16"})
    internal = resolver_for({"hooks.internal": ["10.99.0.1"], "other.internal": ["10.99.0.2"]})
    assert check_url("http://127.0.0.1:9000/", settings, internal) == ["127.0.0.1"]
    assert check_url("http://hooks.internal/x", settings, internal) == ["10.99.0.1"]
    assert check_url("http://10.20.3.4/x", settings, internal) == ["10.20.3.4"]
    with pytest.raises(RefusedURL, match="private"):
        check_url("http://other.internal/x", settings, internal)
    with pytest.raises(RefusedURL, match="loopback"):
        check_url("http://127.0.0.2/", settings, internal)
    with pytest.raises(RefusedURL, match="metadata"):
        check_url("http://169.254.169.254/", settings, internal)
