"""The statement that applies one batch of click reports on the master (links/totals.py, whose
docstring says what it keeps true), with the reasons for its form.
"""

# One statement, one round trip:
#   found:   each counter's link, by its tinyurl (NULL: no such link), and whether its
#            incarnation ended (EndedIncarnation: folded by links/pruning.py; an uncorrelated
#            subquery, run once a statement for the batch's incarnations, not once a counter);
#   known:   the counters of known links in incarnations that have not ended, with the count
#            each holds now (NULL: a new counter). A counter of an ended incarnation is refused:
#            its count was folded away, so max() has nothing to compare a late or replayed
#            report with, and applying it would count its clicks again;
#   up:      insert or raise the counters whose reported count, or bots, is larger (replays
#            stop here: nothing to write), labelled with the node whose report raised the count.
#            Count and bots are each kept by max(): both only grow on a replica, so each one's
#            largest is its latest; a milestone report's bots are a lower bound
#            (redirects/reporter.py), so a later report may raise the bots alone;
#   raised:  the counters actually raised, with the count and bots they held (`old`);
#   delta:   each link's increase of clicks (all of them, bots' too) and of bot clicks, from the
#            counters raised;
#   totals:  added to the links' totals (Link.clicks, Link.bot_clicks);
#   shares:  each run's part of its counter's increase (ClicksBatch): a run from p to e (p: the
#            largest count before it in the batch) raises the counter by e - max(old, p) if that
#            is positive. The runs of a counter end at successive counts up to its new count, so
#            their shares add up to exactly (new - old), the increase added to the total: buckets
#            and totals always agree, and a counter not raised (a duplicate, a replay) has no
#            share. The counter's last run travels with it (p = 0 and one run: the whole
#            increase); the earlier runs, rare, in arrays of their own joined by ordinal;
#   buckets: the shares summed per (link, node, hour), as one ON CONFLICT may not touch a row
#            twice (two incarnations of a link on one node in a batch), added to the buckets;
# and the tinyurls that match no link, and the counters refused (ended incarnations). The
# buckets hold all clicks, not split by kind (docs/delivery-guarantees.md). The lookups are
# scalar subqueries (the stored count and bots in one, as an array: OFFSET 0 keeps the planner
# from copying the subquery into each of its two uses), so each is one index probe per counter
# whatever the tables' sizes (as joins, the planner hashed the whole links and counters tables
# on every batch). All parts of a WITH statement see one snapshot, and the position row lock
# makes this transaction the only writer of its partition's counters (all reports of a counter
# share its key, hence its partition), so `old` is the value the upsert replaces; the upsert's
# WHERE checks it again. The batch travels as PostgreSQL array literals (text parameters parsed
# by array_in), not as thousands of parameters or ARRAY[...] expressions: planning the
# statement took 14 ms a batch with those, 0.4 ms with literals; hours travel once each,
# counters name theirs by index.
# The ORM cannot say "ON CONFLICT ... WHERE stored < new RETURNING", hence SQL.
# synchronous_commit is off for this transaction only: its commit returns without waiting for
# the WAL flush ("asynchronous commit" in PostgreSQL's documentation: a crash of the server may
# forget transactions of up to three times wal_writer_delay before it, never half of one).
# What it forgets is the last batches' totals and buckets together with their position:
# consume_clicks re-reads those reports from Kafka and max() applies them again, so nothing is
# lost or doubled.
_COUNTERS_SQL = """
SET LOCAL synchronous_commit TO off; SET LOCAL jit TO off; SET LOCAL work_mem TO '64MB';
WITH input(known_id, tinyurl, incarnation, node, count, hour, prev, ord, bots) AS (
    SELECT * FROM unnest(%(link_ids)s::bigint[], %(tinyurls)s::varchar[],
                         %(incarnations)s::varchar[], %(nodes)s::varchar[], %(counts)s::bigint[],
                         %(hour_of)s::int[], %(prevs)s::bigint[], %(ords)s::bigint[],
                         %(bots)s::bigint[])
),
found AS (
    SELECT i.tinyurl, i.incarnation, i.node, i.count, i.hour, i.prev, i.ord, i.bots,
           i.known_id IS NULL AS looked_up,
           COALESCE(i.known_id,
                    (SELECT l.id FROM links_link l WHERE l.tinyurl = i.tinyurl)) AS link_id,
           i.incarnation IN (SELECT e.incarnation FROM links_endedincarnation e
                             WHERE e.incarnation = ANY(%(incarnations)s::varchar[])) AS ended
    FROM input i
),
known AS (
    SELECT link_id, incarnation, node, count, hour, prev, ord, bots,
           held[1] AS old, COALESCE(held[2], 0) AS old_bots
    FROM (SELECT f.*,
                 (SELECT ARRAY[c.count, c.bots] FROM links_clickcounter c
                  WHERE c.link_id = f.link_id AND c.incarnation = f.incarnation) AS held
          FROM found f WHERE f.link_id IS NOT NULL AND NOT f.ended
          OFFSET 0) s
),
up AS (
    INSERT INTO links_clickcounter (link_id, incarnation, node, count, bots, updated_at)
    SELECT link_id, incarnation, node, count, bots, now() FROM known
    WHERE old IS NULL OR old < count OR old_bots < bots
    ON CONFLICT (link_id, incarnation) DO UPDATE
        SET count = GREATEST(links_clickcounter.count, EXCLUDED.count),
            bots = GREATEST(links_clickcounter.bots, EXCLUDED.bots),
            node = CASE WHEN links_clickcounter.count < EXCLUDED.count THEN EXCLUDED.node
                        ELSE links_clickcounter.node END,
            updated_at = EXCLUDED.updated_at
        WHERE links_clickcounter.count < EXCLUDED.count
           OR links_clickcounter.bots < EXCLUDED.bots
    RETURNING link_id, incarnation
),
raised AS (
    SELECT k.link_id, k.node, k.count, k.hour, k.prev, k.ord, COALESCE(k.old, 0) AS old,
           GREATEST(k.bots - k.old_bots, 0) AS bots_up
    FROM up JOIN known k ON k.link_id = up.link_id AND k.incarnation = up.incarnation
),
delta AS (
    SELECT link_id, SUM(GREATEST(count - old, 0)) AS d, SUM(bots_up) AS b
    FROM raised GROUP BY link_id
),
totals AS (
    UPDATE links_link l SET clicks = l.clicks + delta.d, bot_clicks = l.bot_clicks + delta.b
    FROM delta WHERE l.id = delta.link_id
    RETURNING 1
){buckets}
SELECT (SELECT count(*) FROM up),
       (SELECT array_agg(DISTINCT tinyurl) FROM found WHERE link_id IS NULL),
       (SELECT count(*) FROM found WHERE link_id IS NOT NULL AND ended),
       (SELECT array_agg(DISTINCT incarnation) FROM found WHERE link_id IS NOT NULL AND ended),
       (SELECT json_object_agg(tinyurl, link_id) FROM found
        WHERE looked_up AND link_id IS NOT NULL)
"""
_BUCKETS_CTE = """,
shares(link_id, node, hour, clicks) AS (
    SELECT link_id, node, hour, count - GREATEST(old, prev) FROM raised
    UNION ALL
    SELECT r.link_id, e.node, e.hour, e.last - GREATEST(r.old, e.prev)
    FROM unnest(%(e_ords)s::bigint[], %(e_nodes)s::varchar[], %(e_hours)s::int[],
                %(e_prevs)s::bigint[], %(e_lasts)s::bigint[]) AS e(ord, node, hour, prev, last)
    JOIN raised r ON r.ord = e.ord
),
buckets AS (
    INSERT INTO links_clickbucket (link_id, node, hour, clicks)
    SELECT link_id, node, (%(hours)s::timestamptz[])[hour], SUM(clicks) FROM shares
    WHERE clicks > 0
    GROUP BY link_id, node, hour
    ON CONFLICT (link_id, hour, node) DO UPDATE
        SET clicks = links_clickbucket.clicks + EXCLUDED.clicks
    RETURNING 1
)"""
# The statement consume_clicks runs. (bench/buckets.py and bench/clicks.py measure the apply
# without the buckets, as a baseline, by putting _COUNTERS_SQL.format(buckets="") here.)
_APPLY_SQL = _COUNTERS_SQL.format(buckets=_BUCKETS_CTE)
