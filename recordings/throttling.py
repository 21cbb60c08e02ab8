"""Abuse limits: DRF's scoped throttles (start, chunk, finalize, read), rates from the settings,
counted per client address as the socket or the configured proxies say, never as the client says."""

import ipaddress

from django.conf import settings
from rest_framework.throttling import ScopedRateThrottle

# An IPv6 host usually holds a whole /64 and can use any address in it: one client, one budget.
IPV6_CLIENT_PREFIX = 64


def client_address(meta: dict, num_proxies: int) -> str:
    """The address a request came from: the socket's peer with no proxy in front; behind
    `num_proxies` proxies that each append to X-Forwarded-For, the entry `num_proxies` from the
    right (what the first proxy saw). Entries to the left of it are whatever the client sent."""
    address = meta.get("REMOTE_ADDR", "")
    header = meta.get("HTTP_X_FORWARDED_FOR", "").strip()
    if num_proxies > 0 and header:
        forwarded = [entry.strip() for entry in header.split(",")]
        if len(forwarded) >= num_proxies:  # fewer: the request did not come through the proxies
            address = forwarded[-num_proxies]
    return address


def throttle_key(address: str) -> str:
    """One budget per IPv4 address or IPv6 /64; anything unparsable shares one budget."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return "unparsable"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed)


class ScopedThrottle(ScopedRateThrottle):
    """Per client address and scope. Rates come from RECORDER_THROTTLE_RATES when each request is
    checked (DRF's own class reads its rates once, at import), so a scope set to `off` is free.

    Counts live in Django's cache: per process with the default local-memory cache, so N web
    processes allow about N times the rate; the front proxy is the place for a hard global limit.
    """

    def get_rate(self) -> str | None:
        return settings.RECORDER_THROTTLE_RATES.get(self.scope or "")

    def get_ident(self, request) -> str:
        return throttle_key(client_address(request.META, settings.RECORDER_NUM_PROXIES))
