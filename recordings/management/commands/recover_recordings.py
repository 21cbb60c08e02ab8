"""`manage.py recover_recordings`: run again the recordings whose processing run died."""

from django.conf import settings
from django.core.management.base import BaseCommand

from recordings import backends, services


class Command(BaseCommand):
    help = (
        "Queue again every recording stuck in `processing` because its run stopped (a killed worker "
        "or web process); those out of attempts become `failed`. Idempotent: safe to run from cron."
    )

    def handle(self, *args, **options):
        requeued = services.recover_stale_recordings()
        for session_id in requeued:
            self.stdout.write(f"{session_id}: queued again")
        self.stdout.write(f"{len(requeued)} recording(s) queued again")
        if requeued and settings.RECORDER_TASKS_BACKEND == "embedded":
            # queued on this command's own threads: run them before the process ends
            self.stdout.write("processing them here (RECORDER_TASKS_BACKEND=embedded)")
            backends.wait_until_idle()
