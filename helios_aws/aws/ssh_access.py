"""Port 22 open only while a run needs the host.

Without ``--ssh-cidr`` (the closed mode), the security group has no standing SSH rule: a
command that opens SSH first adds a rule for the operator's current address (``--ssh-from``,
or what AWS's address echo answers) and removes it when it ends, also after Ctrl-C, SIGTERM
or a failure. The rule's description says whose run it belongs to and until when::

    helios-aws run admin@laptop pid 4242 from 2026-12-07T23:50:00Z until 2026-12-08T05:50:00Z

so two operators never remove each other's rule: a run removes its own rule, and rules
of runs that are over (past their time, or, on this machine, whose process is gone: a
killed run). ``aws_check`` reports such a leftover with its age (aws.W040) and leaves it
to the next run. With ``--ssh-cidr`` the standing rule of today stays, and nothing here
runs.

Security groups track connections: removing the rule does not cut a connection that is
already open, it only refuses new ones.
"""

import contextlib
import datetime
import getpass
import ipaddress
import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request

from ..errors import ConfigError
from .session import call

SSH_PORT = 22
ECHO_URL_VARIABLE = "HELIOS_AWS_ADDRESS_ECHO_URL"
DEFAULT_ECHO_URL = "https://checkip.amazonaws.com"
ECHO_TIMEOUT = 10
# How long a run's rule may stay before any run may remove it: the longest a command
# holds the host (a restore into production may take hours) with room to spare.
LEASE = datetime.timedelta(hours=8)
PREFIX = "helios-aws run "
STAMP = "%Y-%m-%dT%H:%M:%SZ"
DESCRIPTION_RE = re.compile(
    re.escape(PREFIX) + r"(?P<owner>\S+) pid (?P<pid>\d+) from (?P<start>\S+) "
    r"until (?P<until>\S+)\Z")
# What AWS accepts in a rule's description, besides letters and digits.
DESCRIPTION_CHARS = re.compile(r"[^A-Za-z0-9. _\-:/()#,@\[\]+=&;{}!$*]")
SOURCES = (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6"))


def closed(deployment):
    """Whether SSH is opened per run (no standing --ssh-cidr rule)."""
    return not deployment.ssh_cidr


def mode_line(deployment):
    """What the plan says about port 22."""
    if closed(deployment):
        return ("SSH (port 22): closed between runs; each run that needs the server opens "
                "it to the operator's address alone (--ssh-from, or found through "
                f"{echo_url()}) and closes it at its end.")
    return (f"SSH (port 22): a standing rule for {deployment.ssh_cidr} (--ssh-cidr); "
            "without it, port 22 would be open only during a run, to the operator's "
            "address.")


def echo_url():
    return os.environ.get(ECHO_URL_VARIABLE) or DEFAULT_ECHO_URL


def operator_address(given=None):
    """The address the server sees this machine come from: ``given`` (--ssh-from), else
    AWS's address echo's answer; ConfigError when neither gives one."""
    hint = ("Give your public address with --ssh-from 203.0.113.7 (or run aws_configure "
            "--ssh-cidr for a standing rule).")
    if given:
        try:
            return str(ipaddress.ip_address(given.strip()))
        except ValueError:
            raise ConfigError(f"--ssh-from {given!r} is not an IP address.", hint) from None
    url = echo_url()
    try:
        with urllib.request.urlopen(url, timeout=ECHO_TIMEOUT) as answer:
            text = answer.read(200).decode("ascii", "replace").strip()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"Could not ask {url} for this machine's public address, which "
                          f"port 22 is opened to for this run ({exc}).", hint) from None
    try:
        return str(ipaddress.ip_address(text.splitlines()[0] if text else ""))
    except ValueError:
        raise ConfigError(f"{url} answered {text[:60]!r}, not an IP address.", hint) from None


def owner():
    """Whose run: the local user at this machine, as a rule's description allows."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return DESCRIPTION_CHARS.sub("-", f"{user}@{socket.gethostname()}")[:100]


def now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def description(start, pid=None, who=None):
    return (f"{PREFIX}{who or owner()} pid {pid or os.getpid()} from "
            f"{start.strftime(STAMP)} until {(start + LEASE).strftime(STAMP)}")


def _stamp(text):
    return datetime.datetime.strptime(text, STAMP).replace(tzinfo=datetime.timezone.utc)


def run_rules(group):
    """The per-run SSH rules of ``group`` (a describe_security_groups answer), as dicts:
    source, kind, owner, pid, start, until, description."""
    found = []
    for perm in (group or {}).get("IpPermissions") or ():
        if perm.get("IpProtocol") != "tcp" or perm.get("FromPort") != SSH_PORT \
                or perm.get("ToPort") != SSH_PORT:
            continue
        for field, key in SOURCES:
            for source in perm.get(field) or ():
                match = DESCRIPTION_RE.match(source.get("Description") or "")
                if not match:
                    continue
                try:
                    start, until = _stamp(match["start"]), _stamp(match["until"])
                except ValueError:
                    continue
                found.append({"source": source[key], "kind": "ipv4" if field == "IpRanges"
                              else "ipv6", "owner": match["owner"], "pid": int(match["pid"]),
                              "start": start, "until": until,
                              "description": source["Description"]})
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def is_leftover(rule, moment=None):
    """A rule whose run is over: past its time, or a run of this machine whose process is
    gone (killed). A rule of a run elsewhere is never taken for over before its time."""
    if rule["until"] <= (moment or now()):
        return True
    return rule["owner"] == owner() and rule["pid"] != os.getpid() and not _alive(rule["pid"])


def rule_tuple(rule):
    """The rule as network.py's (protocol, from, to, kind, source)."""
    return ("tcp", SSH_PORT, SSH_PORT, rule["kind"], rule["source"])


def describe_age(delta):
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def _permission(rule_source, kind, text=None):
    field, key = SOURCES[0] if kind == "ipv4" else SOURCES[1]
    entry = {key: rule_source}
    if text:
        entry["Description"] = text
    return {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT, field: [entry]}


def _group(ec2, group_id):
    groups = call("read the security group", ec2.describe_security_groups,
                  missing=("InvalidGroup.NotFound",), GroupIds=[group_id])
    return (groups or {}).get("SecurityGroups", [None])[0]


def revoke(ec2, group_id, rule):
    """Remove one run's rule (nothing when it or its group is gone already)."""
    call("remove a run's SSH rule from the security group", ec2.revoke_security_group_ingress,
         missing=("InvalidPermission.NotFound", "InvalidGroup.NotFound"),
         GroupId=group_id, IpPermissions=[_permission(rule["source"], rule["kind"])])


class Access:
    """The rule of one run: :meth:`open` adds it (and removes leftovers), :meth:`close`
    removes it. ``say(text)`` shows the operator what is done."""

    def __init__(self, aws, group_id, address, say):
        self.aws = aws
        self.group_id = group_id
        self.address = ipaddress.ip_address(address)
        self.say = say
        self.rule = None

    @property
    def source(self):
        return f"{self.address}/{self.address.max_prefixlen}"

    def open(self):
        ec2 = self.aws.client("ec2")
        group = _group(ec2, self.group_id)
        if group is None:
            raise ConfigError(f"The security group {self.group_id} recorded for this "
                              "deployment does not exist, so SSH cannot be opened.",
                              "Run aws_provision to put it back.")
        for rule in run_rules(group):
            if is_leftover(rule) and rule["source"] != self.source:
                revoke(ec2, self.group_id, rule)
                self.say(f"Removed a leftover SSH rule of an ended run ({rule['owner']}, pid "
                         f"{rule['pid']}, opened {describe_age(now() - rule['start'])} ago).")
        kind = "ipv4" if self.address.version == 4 else "ipv6"
        mine = [r for r in run_rules(group) if r["source"] == self.source]
        if mine and not is_leftover(mine[0]):
            # Another run from the same address (AWS keeps one rule per address): use it,
            # and leave it to that run to remove.
            self.say(f"SSH (port 22) is open to {self.source} already, for the run of "
                     f"{mine[0]['owner']} (pid {mine[0]['pid']}); this run uses it.")
            return self
        if mine:
            revoke(ec2, self.group_id, mine[0])
        start = now()
        text = description(start)
        rule = {"source": self.source, "kind": kind}
        try:
            answer = call("open SSH (port 22) to this machine's address for the run",
                          ec2.authorize_security_group_ingress,
                          missing=("InvalidPermission.Duplicate",), GroupId=self.group_id,
                          IpPermissions=[_permission(self.source, kind, text)])
        except BaseException:
            # Interrupted, AWS may have added it all the same: no caller will close it.
            with contextlib.suppress(Exception):
                revoke(ec2, self.group_id, rule)
            raise
        if answer is None:  # a rule for the same address (added by hand) covers it
            self.say(f"SSH (port 22) is open to {self.source} already, by another rule.")
            return self
        self.rule = rule
        self.say(f"SSH (port 22) opened to {self.source} for this run, in {self.group_id} "
                 f"(until {(start + LEASE).strftime(STAMP)} at the latest).")
        return self

    def close(self):
        if self.rule is not None:
            rule, self.rule = self.rule, None
            revoke(self.aws.client("ec2"), self.group_id, rule)
            self.say(f"SSH (port 22) closed again to {self.source}.")


@contextlib.contextmanager
def ending_on_signals(deployment):
    """Without --ssh-cidr: SIGTERM and SIGHUP (a closed terminal) end the block as Ctrl-C
    does, so the cleanup that follows removes the run's rule; only SIGKILL leaves it
    behind, for the next run to remove. Handlers set by someone else are kept."""
    trapped = {}
    if closed(deployment) and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous == signal.SIG_DFL:
                trapped[signum] = previous
                signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, previous in trapped.items():
            signal.signal(signum, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"Stopped by signal {signal.Signals(signum).name}.")


def recorded_group(state):
    """The deployment's security group as state.json records it (finding it by its tag
    when the file lost it is the AWS half's job: aws_provision adopts it)."""
    return ((state or {}).get("security_group") or {}).get("id")


def open_for(aws, deployment, group_id, given, say):
    """The run's :class:`Access`, opened; None with --ssh-cidr (a standing rule) or when
    the deployment has no security group (a server this tool did not make)."""
    if not closed(deployment) or not group_id:
        return None
    return Access(aws, group_id, operator_address(given), say).open()


@contextlib.contextmanager
def opened(aws_factory, deployment, state, given, say):
    """``open_for`` for a command that holds the host for a block: the rule exists for
    the block and is removed after it, whatever ends it."""
    group_id = recorded_group(state)
    with ending_on_signals(deployment):
        access = None
        if closed(deployment) and group_id:
            access = open_for(aws_factory(), deployment, group_id, given, say)
        try:
            yield access
        finally:
            if access is not None:
                access.close()
