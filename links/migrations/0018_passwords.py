"""Password-protected links (issue 18): Link.password_hash, the salted scrypt hash of a link's
password (topics/passwords.py), NULL for a link without one. A nullable column without a default
is a catalogue change in PostgreSQL (no table rewrite); existing links are unprotected.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('links', '0017_bots'),
    ]

    operations = [
        migrations.AddField(
            model_name='link',
            name='password_hash',
            field=models.CharField(blank=True, editable=False, max_length=220, null=True),
        ),
    ]
