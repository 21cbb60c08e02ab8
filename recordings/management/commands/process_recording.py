"""`manage.py process_recording <session_id>`: run processing again, synchronously."""

from django.core.management.base import BaseCommand, CommandError

from recordings import services
from recordings.errors import RecorderError


class Command(BaseCommand):
    help = "Process a recording again (after a failure, or to rebuild its outputs). Safe to repeat."

    def add_arguments(self, parser):
        parser.add_argument("session_id")

    def handle(self, *args, session_id: str, **options):
        try:
            session = services.reprocess_recording(session_id=session_id)
        except RecorderError as error:
            raise CommandError(f"{error.code}: {error.detail}") from error
        if session.status == "ready":
            self.stdout.write(
                f"{session.id}: ready, {session.duration_seconds:.2f} s in {session.processing_seconds:.2f} s"
            )
        else:
            raise CommandError(f"{session.id}: {session.status} ({session.error_code}: {session.error_detail})")
