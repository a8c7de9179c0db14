"""What differs between the supported host operating systems.

A recipe names the packages, services, paths and commands of one OS; the host steps are
written once against this interface. Amazon Linux 2 has no recipe: it
is refused before any connection (see ``params.AL2_END_OF_SUPPORT``).
"""

import shlex

from ..errors import ConfigError
from ..params import AL2_END_OF_SUPPORT

PYTHON_VERSION = (3, 13)
PYTHON = "/usr/bin/python3.13"
NOLOGIN = "/usr/sbin/nologin"
# apt's machine-readable progress ("pmstatus:PACKAGE:PERCENT:Unpacking ...") on stdout,
# read by helios_aws.host.progress while the install runs.
PROGRESS_APT = "-o APT::Status-Fd=1"

# RabbitMQ for the local Celery worker only: AMQP, Erlang distribution and epmd (Erlang's
# port mapper, socket-activated by systemd on Debian) on loopback. The node is named
# after "localhost" because the host name may resolve to an address epmd no longer
# listens on (127.0.1.1 on Debian, the private address on EC2).
RABBITMQ_FILES = {
    "/etc/rabbitmq/rabbitmq-env.conf": """\
# Written by helios-aws: one local node for the Celery worker.
NODENAME=rabbit@localhost
""",
    "/etc/rabbitmq/conf.d/90-helios-aws.conf": """\
# Written by helios-aws: the broker serves the local Celery worker only.
listeners.tcp.default = 127.0.0.1:5672
distribution.listener.interface = 127.0.0.1
""",
    "/etc/systemd/system/epmd.socket.d/helios-aws.conf": """\
# Written by helios-aws: Erlang's port mapper on loopback only.
[Socket]
ListenStream=
ListenStream=127.0.0.1:4369
""",
}
REDIS_BIND = "bind 127.0.0.1 -::1"


class Recipe:
    """The host OS as the steps see it. Subclasses fill in the names."""

    os = ""
    label = ""
    base_packages = ()
    broker_packages = {}
    broker_services = {}
    postgres_service = "postgresql"
    ca_anchor_dir = ""
    ca_suffix = ".crt"
    # Our anchors' names: the directory may hold others' anchors, which stay untouched.
    ca_prefix = "helios-aws-"
    ca_update = ""
    ca_bundle = ""
    distro_renew_timer = ""
    git_package = "git"
    python_hint = ""

    def packages(self, broker, git=False):
        names = list(self.base_packages) + list(self.broker_packages[broker])
        if git:
            names.append(self.git_package)
        return names

    def query_packages(self, names):
        """A command printing the name of each of ``names`` that is installed."""
        raise NotImplementedError

    def install_packages(self, names):
        raise NotImplementedError

    def python_query(self):
        """A command printing whether python3.13 can be installed: ``available``,
        ``missing`` or ``unknown`` (the package index cannot say yet)."""
        raise NotImplementedError

    @property
    def ca_anchor_glob(self):
        """A shell pattern matching our CA anchors, and only ours."""
        return f"{shlex.quote(self.ca_anchor_dir)}/{self.ca_prefix}*{self.ca_suffix}"

    def postgres_init(self):
        """A command that creates the database cluster when there is none ('' if the
        package does it)."""
        return ""

    def broker_service(self, broker):
        return self.broker_services[broker]

    def broker_files(self, broker):
        """{path: text} of the broker's configuration files this tool owns. They are
        written before the broker is installed, so it never listens elsewhere."""
        return dict(RABBITMQ_FILES) if broker == "rabbitmq" else {}

    def broker_restart(self, broker):
        """A command restarting the broker with new configuration."""
        service = self.broker_service(broker)
        if broker == "rabbitmq":
            # The socket cannot be restarted under its running epmd, and the broker's
            # ExecStop (rabbitmqctl) needs epmd: stop the broker first.
            return (f"systemctl stop {service} && systemctl stop epmd.service epmd.socket && "
                    f"systemctl start epmd.socket {service}")
        return f"systemctl restart {service}"

    def redis_conf(self):
        return ""

    @staticmethod
    def broker_ports(broker):
        return (5672, 25672, 4369) if broker == "rabbitmq" else (6379,)


class Debian13(Recipe):
    os = "debian13"
    label = "Debian 13 (trixie)"
    base_packages = (
        "python3.13", "python3.13-venv", "python3.13-dev", "gcc", "libldap-dev",
        "libsasl2-dev", "postgresql", "nginx", "certbot", "curl", "ca-certificates",
    )
    broker_packages = {"rabbitmq": ("rabbitmq-server",), "redis": ("redis-server",)}
    broker_services = {"rabbitmq": "rabbitmq-server.service", "redis": "redis-server.service"}
    ca_anchor_dir = "/usr/local/share/ca-certificates/helios-aws"
    ca_update = "update-ca-certificates >/dev/null"
    ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
    distro_renew_timer = "certbot.timer"
    apt_lists = "/var/lib/apt/lists"
    python_hint = ("Debian 13 has python3.13 in its main archive: check the server's apt "
                   "sources (/etc/apt/sources.list.d/), or start from the official Debian 13 "
                   "image.")

    def query_packages(self, names):
        return ("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' "
                f"{shlex.join(names)} 2>/dev/null | awk '$2 == \"ii\" {{ print $1 }}'")

    def install_packages(self, names):
        # A run interrupted on the server (a reboot, a killed dpkg) can leave dpkg half-way:
        # finish that first. A new instance's own apt jobs (unattended-upgrades) may hold
        # dpkg's or apt's lock for a while: wait for them, within bounds.
        wait = "-o DPkg::Lock::Timeout=600"
        retry = ("retry() { n=0; until \"$@\"; do n=$((n+1)); "
                 "[ $n -lt 30 ] || return 1; sleep 10; done; }; ")
        return ("export DEBIAN_FRONTEND=noninteractive; " + retry +
                "if [ -n \"$(ls -A /var/lib/dpkg/updates 2>/dev/null)\" ]; then "
                "retry dpkg --configure -a --force-confold && "
                f"apt-get {wait} install -f -y -q -o Dpkg::Options::=--force-confold; fi && "
                f"retry apt-get {wait} update -q && "
                f"apt-get {wait} install -y -q --no-install-recommends "
                f"-o Dpkg::Options::=--force-confold {PROGRESS_APT} {shlex.join(names)}")

    def python_query(self):
        # A new instance may not have fetched its package lists yet: then nobody knows.
        return (f"if set -- {self.apt_lists}/*Packages*; [ -e \"$1\" ]; then "
                "c=$(apt-cache policy python3.13 2>/dev/null | sed -n 's/^ *Candidate: *//p'); "
                "case $c in ''|'(none)') echo missing ;; *) echo available ;; esac; "
                "else echo unknown; fi")

    def redis_conf(self):
        return "/etc/redis/redis.conf"


class AmazonLinux2023(Recipe):
    os = "al2023"
    label = "Amazon Linux 2023"
    # curl-minimal is part of the image; the full curl package would conflict with it.
    # util-linux (not the image's util-linux-core) has nologin and runuser.
    base_packages = (
        "python3.13", "python3.13-devel", "gcc", "openldap-devel", "cyrus-sasl-devel",
        "postgresql15-server", "nginx", "certbot", "ca-certificates", "util-linux",
    )
    # Valkey replaces redis6 (end of life 2025-08-31) and speaks the same protocol, so
    # the broker URL stays redis://. Its package, unit and configuration names follow
    # AWS's announcement; they are to be confirmed on a real host.
    broker_packages = {"redis": ("valkey",)}
    broker_services = {"redis": "valkey.service"}
    # p11-kit reads only the files directly in this directory (a subfolder is ignored).
    ca_anchor_dir = "/etc/pki/ca-trust/source/anchors"
    ca_suffix = ".pem"
    ca_update = "update-ca-trust extract"
    ca_bundle = "/etc/pki/tls/certs/ca-bundle.crt"
    distro_renew_timer = "certbot-renew.timer"
    python_hint = ("python3.13 is not in this AMI's repository (each AMI is locked to its "
                   "own release's): use an AMI from 2025 or later (aws_provision picks the "
                   "latest), or --os debian13.")
    # At first boot the SSM agent or dnf-makecache may hold the rpm database lock
    # (amazon-linux-2023 issue #397): dnf then fails at once. Wait and retry, bounded.
    dnf_tries = 30
    dnf_delay = 10

    def query_packages(self, names):
        return (f"rpm -q --qf '%{{NAME}}\\n' {shlex.join(names)} 2>/dev/null "
                "| grep -v ' ' || true")

    def install_packages(self, names):
        # Not -q: the transaction's "Installing : NAME 12/80" lines are its progress. They
        # stream; dnf's errors are kept to tell a busy rpm database (retry) from a real
        # failure (stop at once, e.g. a package the repository lacks).
        return "\n".join([
            "err=$(mktemp) || exit 1",
            "trap 'rm -f \"$err\"' EXIT",
            "n=1",
            f"until dnf install -y {shlex.join(names)} 2>\"$err\"; do",
            "  if ! grep -qiE 'lock|Errno 2|download metadata' \"$err\"; then",
            "    cat \"$err\" >&2; exit 1",
            "  fi",
            f"  if [ \"$n\" -ge {self.dnf_tries} ]; then",
            "    cat \"$err\" >&2",
            f"    echo \"dnf is still busy after {self.dnf_tries} tries: another package job "
            "holds the rpm database (see: sudo journalctl -b).\" >&2",
            "    exit 1",
            "  fi",
            "  echo \"dnf is busy (another package job at first boot, e.g. the SSM agent or "
            f"dnf-makecache): try $((n + 1)) of {self.dnf_tries} in {self.dnf_delay} s\" >&2",
            f"  sleep {self.dnf_delay}",
            "  n=$((n + 1))",
            "done",
        ])

    def python_query(self):
        return ("if out=$(dnf -q list --available python3.13 2>&1); then echo available; "
                "elif printf '%s' \"$out\" | grep -qi 'no matching'; then echo missing; "
                "else echo unknown; fi")

    def postgres_init(self):
        return ("[ -f /var/lib/pgsql/data/PG_VERSION ] || "
                "postgresql-setup --initdb >/dev/null")

    def redis_conf(self):
        return "/etc/valkey/valkey.conf"


RECIPES = {r.os: r for r in (Debian13(), AmazonLinux2023())}


def for_deployment(deployment):
    """The recipe of the deployment's OS; ConfigError for what cannot be served."""
    if deployment.os == "al2":
        raise ConfigError(f"--os al2 is refused: {AL2_END_OF_SUPPORT}.",
                          "Use --os debian13 (the default) or --os al2023.")
    recipe = RECIPES.get(deployment.os)
    if recipe is None:
        raise ConfigError(f"--os {deployment.os!r} has no host recipe.",
                          f"Use one of: {', '.join(RECIPES)}.")
    broker = deployment.effective_broker
    if broker not in recipe.broker_packages:
        raise ConfigError(
            f"--broker {broker} is not offered on {recipe.label}: the distribution has no "
            "Erlang or RabbitMQ packages, and the RabbitMQ team's own repositories for it "
            "have broken before.",
            "Use --broker redis there (the default), or --os debian13 for RabbitMQ.",
        )
    return recipe
