"""Human and bot clicks (issue 18): Link.bot_clicks, ClickCounter.bots, FoldedClicks.bots.

Each is how many of the row's clicks were a bot's (redirects/bots.py on the replicas; schema-4
click batches, topics/clicks.py); human clicks are the difference. Existing rows get 0: clicks
counted before replicas told bots apart are human ones.

The columns keep a database default of 0, unlike the columns Django fills from model defaults:
the raw inserts of links_link (links.services, bench/clicks.py) do not name the column, and a
replica reporting schema 3 during a rolling upgrade has no bots to give. Adding a column with a
constant default is a catalogue change in PostgreSQL 11 and later (no table rewrite), so this
migration takes milliseconds on a table of millions of links.
"""

from django.db import migrations, models

DEFAULTS = """
ALTER TABLE links_link ALTER COLUMN bot_clicks SET DEFAULT 0;
ALTER TABLE links_clickcounter ALTER COLUMN bots SET DEFAULT 0;
ALTER TABLE links_foldedclicks ALTER COLUMN bots SET DEFAULT 0;
"""
DEFAULTS_DROP = """
ALTER TABLE links_link ALTER COLUMN bot_clicks DROP DEFAULT;
ALTER TABLE links_clickcounter ALTER COLUMN bots DROP DEFAULT;
ALTER TABLE links_foldedclicks ALTER COLUMN bots DROP DEFAULT;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("links", "0016_aliases"),
    ]

    operations = [
        migrations.AddField(
            model_name="link",
            name="bot_clicks",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="clickcounter",
            name="bots",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="foldedclicks",
            name="bots",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunSQL(DEFAULTS, DEFAULTS_DROP),
    ]
