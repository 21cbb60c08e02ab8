"""`manage.py expire_recordings`: expire idle uploads and, with a retention, old recordings (cron)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from recordings import services


class Command(BaseCommand):
    help = (
        "Expire uploads with no chunk for RECORDER_SESSION_TTL (their chunks are deleted) and, when "
        "RECORDER_RETENTION_DAYS is set, ready or failed recordings older than that (all their files are "
        "deleted). Expired ids answer 410. Temporary files left by killed processes and untouched for "
        "RECORDER_TEMP_MAX_AGE are removed. Idempotent: safe to run from cron at any time."
    )

    def handle(self, *args, **options):
        report = services.expire_recordings()
        for session_id in report.abandoned:
            self.stdout.write(f"{session_id}: expired, idle for over {settings.RECORDER_SESSION_TTL} s")
        for session_id in report.past_retention:
            self.stdout.write(f"{session_id}: expired, older than {settings.RECORDER_RETENTION_DAYS} days")
        self.stdout.write(
            f"{len(report.abandoned)} idle upload(s) and {len(report.past_retention)} old recording(s) expired, "
            f"{report.temp_entries_removed} stale temporary file(s) removed"
        )
