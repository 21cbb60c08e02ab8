"""A read-only view id per recording, the finalize wait, chunk counting from 1, and warnings.

Chunks stored before this migration count as not starting a stream: a recording uploading across
the upgrade is not recognised as counting from 1, and waits for its chunk 0 as it did before.

The view id is added in three steps (nullable, filled row by row, then unique), as a unique column
with a callable default cannot be added to rows that already exist in one go."""

import uuid

from django.db import migrations, models


def fill_view_ids(apps, schema_editor):
    RecordingSession = apps.get_model("recordings", "RecordingSession")
    for session in RecordingSession.objects.filter(view_id__isnull=True).only("id").iterator():
        RecordingSession.objects.filter(pk=session.pk).update(view_id=uuid.uuid4())


class Migration(migrations.Migration):
    dependencies = [
        ("recordings", "0005_deletion_and_run_totals"),
    ]

    operations = [
        migrations.AddField(
            model_name="recordingsession",
            name="view_id",
            field=models.UUIDField(null=True, editable=False),
        ),
        migrations.RunPython(fill_view_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="recordingsession",
            name="view_id",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
        migrations.AddField(
            model_name="recordingsession",
            name="settle_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="recordingsession",
            name="first_chunk_index",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="recordingsession",
            name="total_chunks_given",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="chunk",
            name="starts_stream",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="recordingsession",
            name="warnings",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
