import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('links', '0006_protection'),
    ]

    operations = [
        migrations.CreateModel(
            name='ClickBucket',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('node', models.CharField(max_length=100)),
                ('hour', models.DateTimeField()),
                ('clicks', models.BigIntegerField()),
                ('link', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='click_buckets', to='links.link')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('link', 'hour', 'node'), name='links_clickbucket_unique')],
                'indexes': [models.Index(fields=['hour'], name='links_clickbucket_hour')],
            },
        ),
        migrations.CreateModel(
            name='Replica',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
            ],
            options={
                'verbose_name': 'replica',
                'verbose_name_plural': 'replicas',
                'managed': False,
                'default_permissions': ('view',),
            },
        ),
    ]
