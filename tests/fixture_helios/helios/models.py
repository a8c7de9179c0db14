"""The one model the fixture needs, so that migrations and queries are real."""

import uuid

from django.db import models


class Election(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    short_name = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=250)
    featured_p = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name
