"""`manage.py import_links FILE [--format csv|jsonl] [--batch N]`: create the links of a file of
any size, with a progress bar; resumable (links/importing.py says how).

Prints, at the end (or when interrupted), what it did over the whole file so far: lines read,
links created, existing (skipped: the longurl had its link), refused by reason, and not
acknowledged by Kafka (stored; the outbox relay sends them). --errors FILE writes each refused
or unacknowledged line as a JSON line {"line", "reason", "error", "input"}.

Exit status: 0 when every line has its link on the replicas' way (created or existing);
3 when some line was refused or not acknowledged (the summary says which: the import itself
went through, and a re-run will not change a refusal); 1 when the import could not go on (no
such file, no longurl column, a state file of another file or of this one before it changed,
PostgreSQL down: what was committed stays, run again to go on);
130 on Ctrl-C (the state is kept: run again to go on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from tqdm import tqdm

from links import importing

EXIT_REFUSED = 3


class Command(BaseCommand):
    help = "Create the links of a CSV (longurl column) or JSON-lines file, resumably."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=importing.FORMATS,
                            help="default: csv for *.csv, else jsonl")
        parser.add_argument("--batch", type=int, default=5000,
                            help="lines per batch (one INSERT, one commit, one Kafka batch)")
        parser.add_argument("--state", type=Path,
                            help="the resume file (default: FILE.import-state)")
        parser.add_argument("--from-start", action="store_true",
                            help="ignore a resume file: read the file from its first line")
        parser.add_argument("--limit", type=int,
                            help="stop after this many lines (a later run goes on from there)")
        parser.add_argument("--errors", type=Path,
                            help="write refused lines here, a JSON object each")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, file: Path, format: str | None, batch: int, state: Path | None,
               from_start: bool, limit: int | None, errors: Path | None, no_progress: bool,
               **options) -> None:
        if batch < 1 or batch > 10000:
            raise CommandError("--batch: use 1 to 10000")
        fmt = format or importing.format_guess(file)
        state = state or file.with_name(file.name + ".import-state")
        try:
            # Read only: import_file checks it against the file as it reads the file.
            saved = None if from_start else importing.state_load(state)
        except (importing.ImportRefused, OSError) as exc:
            raise CommandError(str(exc)) from None
        resumed = saved.counts if saved else None
        errors_file = errors.open("a" if resumed else "w") if errors else None
        size = file.stat().st_size if file.is_file() else 0
        bar = tqdm(total=size, initial=resumed.offset if resumed else 0, unit="B",
                   unit_scale=True, desc=file.name, disable=no_progress or None,
                   file=sys.stderr)

        last = [resumed]

        def on_batch(counts: importing.ImportCounts) -> None:
            last[0] = counts
            bar.update(counts.offset - bar.n)
            bar.set_postfix(created=counts.created, existing=counts.existing,
                            refused=counts.refused_total, refresh=False)

        def on_resume(counts: importing.ImportCounts) -> None:
            self.stdout.write(f"resuming after line {counts.line_number} (byte {counts.offset}) "
                              f"of {file}, from {state}")

        def on_refused(refusal: importing.Refusal) -> None:
            if errors_file is not None:
                errors_file.write(json.dumps({"line": refusal.line, "reason": refusal.reason,
                                              "error": refusal.message,
                                              "input": refusal.text}) + "\n")
                # Out of this process' buffer before the state file moves past the batch: a
                # run killed after that must not lose the refusals its resume will not see again.
                errors_file.flush()

        counts = None
        try:
            counts = importing.import_file(file, fmt=fmt, batch=batch, state=state,
                                           resume=not from_start, limit=limit,
                                           on_resume=on_resume, on_refused=on_refused,
                                           on_batch=on_batch)
        except importing.ImportRefused as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"the database failed: {exc}; what was committed is kept, run "
                               "again to go on") from None
        except OSError as exc:  # the file unreadable, or the state file unwritable (--state)
            raise CommandError(f"{exc}; what was committed is kept, run again to go on") \
                from None
        except KeyboardInterrupt:
            if last[0] is not None:
                self.stdout.write(self.summary(last[0]) + " (the batches committed so far)")
            self.stdout.write(f"interrupted; run again to go on from {state}")
            sys.exit(130)
        finally:
            bar.close()
            if errors_file is not None:
                errors_file.close()
        self.stdout.write(self.summary(counts))
        if limit is not None and state.exists():
            self.stdout.write(f"stopped after {limit} lines; run again to go on from {state}")
        if counts.refused_total or counts.unacknowledged:
            sys.exit(EXIT_REFUSED)

    @staticmethod
    def summary(counts: importing.ImportCounts) -> str:
        refused = importing.refused_summary(counts)
        return (f"{counts.lines} lines: {counts.created} created, {counts.existing} existing "
                f"(skipped), {counts.refused_total} refused{f' ({refused})' if refused else ''}, "
                f"{counts.unacknowledged} not acknowledged by Kafka (the outbox sends them)")
