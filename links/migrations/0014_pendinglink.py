"""The outbox's worklist moves out of links_link's indexes, so that the published mark is a HOT
update (docs/performance.md, "Bulk creates, the HOT mark").

Before: a partial index of links_link (created_at WHERE published_at IS NULL) found the
unpublished links. PostgreSQL counts the columns of an index's predicate as indexed, so every
published mark (published_at set) was a non-HOT update: a new entry in each of links_link's
indexes for every new link, about two thirds of PostgreSQL's work for it.

After: links_pendinglink holds the id of every link whose published_at is NULL, kept by
PostgreSQL itself (the triggers below) whatever writes links_link; the mark deletes the rows of
the links it marks (links.publishing._links_mark_published). links_link keeps half of each new
page free (fillfactor 50, was 90): a 10,000-link call marks its links in one statement, so each
row's new version must find room in its own page beside the old one (measured: 92 % of the marks
HOT at 50, 62 % at 60, 38 % at 70). Pages written before keep their old packing; their rows'
marks are ordinary updates, as before.

On an existing database, the links unpublished at the migration are added to the table (found
through the old partial index, which is then dropped): the relay still sends every one of them.
The triggers are created first, in the same transaction, which holds links_link's lock from
then on: no link written meanwhile can be missed.
"""

from django.db import migrations, models

TRIGGERS = """
-- Every INSERT statement: one INSERT ... SELECT for all its rows (a statement trigger with a
-- transition table, not a function call per row: 10,000 rows in one go).
CREATE FUNCTION links_pending_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO links_pendinglink (link_id)
    SELECT id FROM inserted WHERE published_at IS NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER links_pending_on_insert AFTER INSERT ON links_link
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION links_pending_on_insert();

-- An UPDATE that sets published_at to NULL (link_update, the links audit): a row trigger,
-- because a statement trigger with transition tables would fire for every UPDATE of the table,
-- consume_clicks' totals included, and copy their rows. The WHEN clause is checked without a
-- function call, so updates that do not clear the mark (the mark itself, the totals) pay
-- nothing.
CREATE FUNCTION links_pending_on_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO links_pendinglink (link_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER links_pending_on_clear AFTER UPDATE OF published_at ON links_link
    FOR EACH ROW WHEN (NEW.published_at IS NULL)
    EXECUTE FUNCTION links_pending_on_clear();

INSERT INTO links_pendinglink (link_id)
SELECT id FROM links_link WHERE published_at IS NULL
ON CONFLICT DO NOTHING;

ALTER TABLE links_link SET (fillfactor = 50);
"""

TRIGGERS_REVERSE = """
ALTER TABLE links_link SET (fillfactor = 90);
DROP TRIGGER links_pending_on_clear ON links_link;
DROP FUNCTION links_pending_on_clear();
DROP TRIGGER links_pending_on_insert ON links_link;
DROP FUNCTION links_pending_on_insert();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('links', '0013_link_fewer_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='PendingLink',
            fields=[
                ('link', models.OneToOneField(db_constraint=False, on_delete=models.DO_NOTHING, primary_key=True, related_name='+', serialize=False, to='links.link')),
            ],
        ),
        migrations.RunSQL(TRIGGERS, TRIGGERS_REVERSE),
        migrations.RemoveIndex(
            model_name='link',
            name='links_link_unpublished',
        ),
    ]
