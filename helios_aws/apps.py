from django.apps import AppConfig


class HeliosAWSConfig(AppConfig):
    name = "helios_aws"
    verbose_name = "Helios on AWS"
    default_auto_field = "django.db.models.AutoField"

    def ready(self):
        # Importing the module registers its system checks.
        from . import checks  # noqa: F401
