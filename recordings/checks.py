"""System checks: settings that would only fail at the first recording are reported at start."""

from django.conf import settings
from django.core.checks import Error, register

from . import utils


@register()
def check_recorder_settings(app_configs, **kwargs) -> list[Error]:
    errors = []
    if settings.RECORDER_AUDIO_FORMAT not in utils.AUDIO_FORMATS:
        errors.append(
            Error(
                f"RECORDER_AUDIO_FORMAT={settings.RECORDER_AUDIO_FORMAT!r} is not one of "
                f"{sorted(utils.AUDIO_FORMATS)}.",
                id="recordings.E001",
            )
        )
    if settings.RECORDER_MAX_CHUNK_BYTES <= 0 or settings.RECORDER_MAX_RECORDING_BYTES <= 0:
        errors.append(
            Error("RECORDER_MAX_CHUNK_BYTES and RECORDER_MAX_RECORDING_BYTES must be positive.", id="recordings.E002")
        )
    return errors
