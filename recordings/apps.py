from django.apps import AppConfig
from django.conf import settings


class RecordingsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "recordings"
    verbose_name = "Recordings"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        # Django spools multipart uploads here and fails if it does not exist.
        settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
