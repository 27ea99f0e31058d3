"""`manage.py kafka_topics`: create the project's Kafka topics if missing (idempotent)."""

from django.core.management.base import BaseCommand

from shortener_project import bus


class Command(BaseCommand):
    help = "Create the project's Kafka topics with their settings (shortener_project/bus.py)."

    def handle(self, *args, **options) -> None:
        created = bus.topics_ensure()
        for spec in bus.topic_specs():
            state = "created" if spec.name in created else "exists"
            self.stdout.write(f"{spec.name}: {state} ({spec.partitions} partition(s))")
