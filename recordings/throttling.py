"""Abuse limits: DRF's scoped throttles (start, chunk, finalize, read), rates from the settings."""

from django.conf import settings
from rest_framework.throttling import ScopedRateThrottle


class ScopedThrottle(ScopedRateThrottle):
    """Per client address and scope. Rates come from RECORDER_THROTTLE_RATES when each request is
    checked (DRF's own class reads its rates once, at import), so a scope set to `off` is free.

    Counts live in Django's cache: per process with the default local-memory cache, so N web
    processes allow about N times the rate; the front proxy is the place for a hard global limit.
    """

    def get_rate(self) -> str | None:
        return settings.RECORDER_THROTTLE_RATES.get(self.scope)
