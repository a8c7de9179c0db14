"""Background tasks run by the Celery worker."""

from celery import shared_task


@shared_task
def echo(value):
    """Return ``value``: enough to see a task make the round trip through the broker."""
    return value


# Mail to voters as Helios sends it (helios/tasks.py): one task for the election queues
# one task per voter; neither retries, and a send that fails is raised into the worker.
@shared_task
def voters_email(election_id, subject, body):
    from helios.models import Voter

    for voter_id in Voter.objects.filter(election_id=election_id).values_list("id", flat=True):
        single_voter_email.delay(voter_id, subject, body)


@shared_task
def single_voter_email(voter_id, subject, body):
    from django.core.mail import send_mail

    from helios.models import Voter

    voter = Voter.objects.select_related("election").get(id=voter_id)
    send_mail(subject, body % {"url": f"/helios/elections/{voter.election.uuid}/vote"},
              None, [voter.voter_email])
