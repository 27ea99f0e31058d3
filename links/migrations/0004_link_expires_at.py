from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('links', '0003_takedown'),
    ]

    operations = [
        migrations.AddField(
            model_name='link',
            name='expires_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
