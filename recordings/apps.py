from django.apps import AppConfig
from django.conf import settings
from django.core.signals import request_started


class RecordingsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "recordings"
    verbose_name = "Recordings"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        # Django spools multipart uploads here and fails if it does not exist.
        settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)

        if settings.RECORDER_TASKS_BACKEND == "embedded":
            # A serving process (any WSGI server) sweeps for runs a killed process lost; management
            # commands, which serve no request, do not.
            request_started.connect(_start_recovery_sweep, dispatch_uid="recorder-recovery-sweep")


def _start_recovery_sweep(**kwargs) -> None:
    from .tasks import keep_recovering

    keep_recovering()
