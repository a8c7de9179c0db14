"""The fixture's models: enough of Helios's elections, voters and ballots that migrations,
queries, backups and the "open election" rule (HELIOS.md) are real."""

import datetime
import uuid

from django.db import models


class Election(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    short_name = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=250)
    featured_p = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # The fields that say whether voting is open, as Helios names them (naive UTC).
    frozen_at = models.DateTimeField(null=True, default=None)
    voting_starts_at = models.DateTimeField(null=True, default=None)
    voting_started_at = models.DateTimeField(null=True, default=None)
    voting_ends_at = models.DateTimeField(null=True, default=None)
    voting_extended_until = models.DateTimeField(null=True, default=None)
    voting_ended_at = models.DateTimeField(null=True, default=None)
    archived_at = models.DateTimeField(null=True, default=None)
    encrypted_tally = models.TextField(null=True, default=None)

    def __str__(self):
        return self.name

    # Helios's own rule, in this fixture's words: its times are naive UTC, written and
    # compared with datetime.utcnow() (USE_TZ is off; the session's zone is TIME_ZONE).
    @staticmethod
    def utcnow():
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def freeze(self):
        self.frozen_at = self.utcnow()
        self.save()

    def voting_has_started(self):
        if self.frozen_at is None:
            return False
        if self.voting_starts_at is None:
            return True
        return self.utcnow() >= (self.voting_started_at or self.voting_starts_at)

    def voting_has_stopped(self):
        end = self.voting_ended_at or self.voting_extended_until or self.voting_ends_at
        return bool((end is not None and self.utcnow() >= end) or self.encrypted_tally)


class Voter(models.Model):
    election = models.ForeignKey(Election, on_delete=models.CASCADE)
    uuid = models.CharField(max_length=50)
    voter_login_id = models.CharField(max_length=100, null=True)
    voter_email = models.CharField(max_length=250, null=True)


class CastVote(models.Model):
    voter = models.ForeignKey(Voter, on_delete=models.CASCADE)
    vote = models.TextField()
    vote_hash = models.CharField(max_length=100)
    cast_at = models.DateTimeField(auto_now_add=True)
    cast_ip = models.GenericIPAddressField(null=True)
    # Helios's verification queue: a cast vote waits until a worker verifies it
    # (verified_at) or finds it invalid (invalidated_at); a tally counts verified ones.
    verified_at = models.DateTimeField(null=True)
    invalidated_at = models.DateTimeField(null=True)
