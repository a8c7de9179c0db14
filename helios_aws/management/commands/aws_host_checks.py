"""Answer aws_check's Django-side host probes from one process (run on the host by it)."""

import os
import sys

from django.core.management.base import BaseCommand

from helios_aws.probes import django_side


class Command(BaseCommand):
    help = ("Used by aws_check over SSH: check the migrations, the database login and (with "
            "--celery-app) the Celery worker in this one process, and print them as JSON.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--celery-app", default="",
                            help="The project's Celery app, as `celery --app` takes it.")

    def handle(self, *args, **options):
        self.stdout.write(django_side.run(options["celery_app"]))
        self.stdout.flush()
        sys.stderr.flush()
        # A check left hanging past its deadline (a silent broker) must not keep the
        # process, and so the probes, waiting at interpreter exit.
        os._exit(0)
