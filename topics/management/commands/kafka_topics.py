"""`manage.py kafka_topics`: create the project's Kafka topics, or check and repair existing ones.

For each topic of topics.provisioning.topic_specs(): created if missing; otherwise its
partition count, replication factor and configs are compared with the project's. A config that
differs is set (and the change printed); what cannot be changed in place (partitions,
replication factor) is printed to stderr and the command exits non-zero, changing nothing else
for that topic. --check reports without repairing (non-zero exit on any difference).
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from kafka.errors import KafkaError

from topics.provisioning import topic_specs, topics_ensure


class Command(BaseCommand):
    help = ("Create the project's Kafka topics with their settings (topics/), "
            "or check and repair the settings of existing ones.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--check", action="store_true",
                            help="only report differences (exit 1 if any); change nothing")

    def handle(self, *args, check: bool, **options) -> None:
        try:
            reports = topics_ensure(repair=not check)
        except KafkaError as exc:
            raise CommandError(f"Kafka ({', '.join(settings.KAFKA_BOOTSTRAP_SERVERS)}) "
                               f"could not be reached or refused: {exc!r}") from exc
        specs = {spec.name: spec for spec in topic_specs()}
        failed = []
        for report in reports:
            spec = specs[report.name]
            if report.created:
                self.stdout.write(f"{report.name}: created ({spec.partitions} partition(s), "
                                  f"{', '.join(f'{k}={v}' for k, v in spec.configs.items())})")
            elif not report.errors and not report.repaired:
                self.stdout.write(f"{report.name}: exists, settings as expected")
            for key, (was, now) in report.repaired.items():
                self.stdout.write(f"{report.name}: repaired {key}: was {was}, now {now}")
            for error in report.errors:
                self.stderr.write(f"{report.name}: {error}")
                failed.append(report.name)
        if failed:
            raise CommandError(
                f"topic(s) {', '.join(sorted(set(failed)))} differ from the project's settings "
                "in ways this command cannot repair (see above)")
