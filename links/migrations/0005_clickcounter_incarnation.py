"""A click counter's identity becomes (link, incarnation); the node is a label.

Rows of one (link, incarnation) under several nodes are the same counter reported from two
places (a node id that changed, or two hosts sharing one Redis): they merge into the row with the
largest count, as consume_clicks' max() would have done, and the links' totals are recomputed
from the counters. Not reversible in data (merged rows stay merged); the schema goes back.

Link.clicks loses its index: with it, every change of a total was a non-HOT update that wrote an
entry into each of links_link's indexes, half of consume_clicks' PostgreSQL time. Both tables keep
a tenth of each new page free (fillfactor 90), so that raising a total or a counter is a HOT
update in place on its page rather than a new row version in every index (docs/performance.md).
"""

from django.db import migrations, models

MERGE_SQL = """
DELETE FROM links_clickcounter c
USING links_clickcounter keep
WHERE keep.link_id = c.link_id AND keep.incarnation = c.incarnation AND keep.id <> c.id
  AND (keep.count, keep.updated_at, keep.id) > (c.count, c.updated_at, c.id);
"""

# Every total that differs from the sum of its counters (after the merge, those that counted a
# counter twice), in one pass.
TOTALS_SQL = """
UPDATE links_link l SET clicks = s.total
FROM (SELECT link_id, SUM(count) AS total FROM links_clickcounter GROUP BY link_id) s
WHERE l.id = s.link_id AND l.clicks <> s.total;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('links', '0004_link_expires_at'),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE links_link SET (fillfactor = 90);"
            "ALTER TABLE links_clickcounter SET (fillfactor = 90);",
            reverse_sql="ALTER TABLE links_link RESET (fillfactor);"
                        "ALTER TABLE links_clickcounter RESET (fillfactor);",
        ),
        migrations.RemoveConstraint(
            model_name='clickcounter',
            name='links_clickcounter_unique',
        ),
        migrations.RunSQL(MERGE_SQL, reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(TOTALS_SQL, reverse_sql=migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name='clickcounter',
            constraint=models.UniqueConstraint(fields=('link', 'incarnation'), name='links_clickcounter_link_incarnation'),
        ),
        migrations.AlterField(
            model_name='link',
            name='clicks',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name='clickcounter',
            name='link',
            field=models.ForeignKey(db_index=False, on_delete=models.deletion.CASCADE, related_name='click_counters', to='links.link'),
        ),
    ]
