"""The host probes that need Django, run together inside one Django process on the host.

Every start of Helios imports all of it (python-ldap, Celery, django-ses...): 12-15 s on
a small emulated server. So migrations, the database login and the Celery ping are
answered by one ``manage.py aws_host_checks`` process (one start-up, one SSH round trip),
which prints one JSON object; the probes of :mod:`helios_aws.probes.host` read it.

Each check runs in a thread of its own with a deadline: one that hangs (a database or a
broker that accepts a connection and never answers) is reported as failed after
``CHECK_SECONDS`` without holding up the others.
"""

import json
import socket
import threading

CHECK_SECONDS = 30.0
CELERY_PING_SECONDS = 5.0
PASS, FAIL = "pass", "fail"


def migrations():
    """{"pending": [app.migration...], "applied": N} of the default database."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    applied = [key for key in executor.loader.graph.nodes
               if key in executor.loader.applied_migrations]
    return {"pending": [f"{m.app_label}.{m.name}" for m, backwards in plan if not backwards],
            "applied": len(applied)}


def database():
    """{"role": ..., "database": ...}: who Helios logs in as, the way Helios connects."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_database()")
        role, name = cursor.fetchone()
    return {"role": role, "database": name}


def celery(app_name):
    """{"nodes": [...]}: the workers of this host that answered a ping. The unit names no
    --hostname, so the worker is celery@HOST; naming it as the destination lets the ping
    return on the first reply instead of at the timeout."""
    from celery.app.utils import find_app

    app = find_app(app_name)
    replies = app.control.ping(destination=[f"celery@{socket.gethostname()}"],
                               timeout=CELERY_PING_SECONDS)
    return {"nodes": sorted(node for reply in replies for node, answer in reply.items()
                            if (answer or {}).get("ok") == "pong")}


def voters():
    """{"elections": N, "voters": M}: the voters (Helios's Voter rows) of the open and
    upcoming elections (elections.py's definition), the mail an invitation round sends."""
    from django.db import connection

    from .. import elections

    names = [e.short_name for e in elections.current(connection)]
    if not names:
        return {"elections": 0, "voters": 0}
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM helios_voter v JOIN helios_election e "
                       "ON e.id = v.election_id WHERE e.short_name = ANY(%s)", [names])
        return {"elections": len(names), "voters": cursor.fetchone()[0]}


def undelivered():
    """{"elections": N, "by_kind": {kind: count}}: the mail ledger's events for the open
    elections (elections.py's definition), by kind."""
    from django.db import connection
    from django.db.models import Count

    from .. import elections
    from ..models import MailEvent

    names = elections.open_now(elections.current(connection))
    if not names:
        return {"elections": 0, "by_kind": {}}
    with connection.cursor() as cursor:
        cursor.execute("SELECT uuid::text FROM helios_election WHERE short_name = ANY(%s)",
                       [names])
        uuids = [row[0] for row in cursor.fetchall()]
    counts = (MailEvent.objects.filter(election_uuid__in=uuids).values("kind")
              .annotate(n=Count("id")))
    return {"elections": len(names), "by_kind": {c["kind"]: c["n"] for c in counts}}


def _timed_out(exc):
    """Whether ``exc`` comes from a socket that waited too long (kombu and psycopg2 wrap
    the TimeoutError in their own exceptions)."""
    while exc is not None:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _bounded(func, seconds):
    """``func()``'s value as {"status": "pass", ...}, or {"status": "fail", "error": ...}
    when it raised or did not return within ``seconds``."""
    outcome = {}

    def target():
        try:
            outcome.update(func(), status=PASS)
        except Exception as exc:  # reported to the probe, which says what failed
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            outcome.update(status=FAIL, error=f"{type(exc).__name__}: {' | '.join(lines[-3:])}",
                           timeout=_timed_out(exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return {"status": FAIL, "error": f"no answer within {seconds:g} s", "timeout": True}
    return dict(outcome)


def run(celery_app, seconds=CHECK_SECONDS):
    """Every check at once, each bounded by ``seconds``; the JSON object to print."""
    checks = {"migrations": migrations, "database": database, "voters": voters,
              "undelivered": undelivered}
    if celery_app:
        checks["celery"] = lambda: celery(celery_app)
    results = {}
    threads = [threading.Thread(target=lambda k=key, f=func: results.__setitem__(
        k, _bounded(f, seconds))) for key, func in checks.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return json.dumps(results, sort_keys=True)
