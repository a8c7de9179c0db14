"""The host half of ``aws_provision``: steps that turn a bare server into a serving Helios.

``steps(ctx)`` returns them in order; ``helios_aws.provision`` runs them after the AWS
steps (or alone, with ``--skip-aws``). Each step reads the server's state with one batched
command, plans only the difference and applies only that, so a second run reports
"no changes".

A deploy never touches the serving release until the new one is ready: the code goes
into a new ``releases/<stamp>-<digest>`` directory with its own virtualenv, ``migrate``
runs from it, and only then is the ``current`` symlink switched and the services
restarted. A failed install or migration therefore leaves the previous release serving.

Options read from ``ctx.options`` (all optional):

``host``, ``ssh_port``, ``ssh_user``, ``ssh_key``
    where and how to log in (else the deployment's ``ssh_user``, the AWS half's facts
    ``host`` and ``ssh_key_file``, ``~/.ssh/config`` and the agent);
``trust_host_key``
    ``SHA256:...`` fingerprint(s) to trust, on top of the AWS half's
    ``host_fingerprints``;
``ssh_wait``
    seconds to keep retrying while the server boots (default 600 for an instance created
    in this run, else 60);
``server``
    the ACME directory URL (default: certbot's, Let's Encrypt);
``ca_bundle``
    a PEM file of CA certificates the server must trust (a local ACME server's, or a
    TLS-inspecting proxy's between the server and the package index);
``git_url``, ``git_ref``
    deploy a git ref cloned on the server instead of uploading the local files;
``keep_releases``
    how many releases to keep on the server (default 3).
"""

import datetime
import hashlib
import re
import shlex
from pathlib import Path, PurePosixPath

from .. import configure, layout as layout_mod, params, project as project_mod
from ..engine import CREATE, KEEP, UNCHANGED, UPDATE, Change, Step
from ..errors import ConfigError, HostError
from . import recipes, release as release_mod
from .progress import ToolProgress
from .ssh import Connection, normalise_fingerprint

KEEP_RELEASES = 3
LIVENESS_PATH = "/helios/elections/params"
APP_UNITS = ("gunicorn.socket", "gunicorn.service", "helios-celery.service")
APP_SERVICES = ("gunicorn.service", "helios-celery.service")
RENEW_TIMER = "helios-certbot-renew.timer"
STATE_DIR = "/var/lib/helios-aws"
CACHE_DIR = "/var/cache/helios-aws"
# A release directory's name: a UTC time stamp and the release id (see Release.apply).
RELEASE_NAME_RE = re.compile(r"[0-9]{14}-[0-9a-f]{16}")
STAMP_GLOB = "[0-9]" * 14
RELEASE_GLOB = STAMP_GLOB + "-" + "[0-9a-f]" * 16
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
EXTRA_PACKAGES = ("gunicorn", "django-environ")
PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
OS_RELEASE = {"debian13": ("debian", "13"), "al2023": ("amzn", "2023")}


# ------------------------------------------------------------------------- helpers


def fact(key, command):
    """A shell line printing the fact ``key``: the output of ``command``, NUL-terminated so
    no value (a file name with a line break, say) can pass for another fact."""
    return f"printf '%s=%s\\0' {q(key)} \"$({command})\"\n"


def parse_facts(text):
    """The NUL-terminated ``key=value`` records the read scripts print, as a dict."""
    facts = {}
    for record in text.split("\0"):
        key, sep, value = record.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def release_name(answer):
    """A release directory name the server answered, checked before any command uses it."""
    if not RELEASE_NAME_RE.fullmatch(answer):
        raise HostError(f"The server answered {answer!r} for a release directory, which is "
                        "not a release's name (time stamp and id).",
                        "Look at the releases directory on the server; remove what this "
                        "tool did not make.")
    return answer


def sha256(data):
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def q(value):
    return shlex.quote(str(value))


def file_hashes_script(paths):
    """Shell lines printing ``sha.<path>=<sha256>`` for each path (empty when missing)."""
    return "".join(fact(f"sha.{p}", f"sha256sum -- {q(p)} 2>/dev/null | cut -c1-64")
                   for p in paths)


def unit_state_script(units):
    return "".join(
        fact(f"enabled.{u}", f"systemctl is-enabled -- {q(u)} 2>/dev/null || true")
        + fact(f"active.{u}", f"systemctl is-active -- {q(u)} 2>/dev/null || true")
        for u in units)


def restart_running(units=APP_SERVICES):
    """Restart those of ``units`` that run (they may not even exist yet)."""
    return (f"for u in {shlex.join(units)}; do "
            "if systemctl is-active --quiet -- \"$u\"; then systemctl restart -- \"$u\"; fi; "
            "done")


def connection(ctx):
    """The run's SSH connection, opened (host key verified) on first use."""
    if ctx.ssh is None:
        ctx.ssh = open_connection(ctx)
    return ctx.ssh


def pinned_fingerprints(ctx):
    """``--trust-host-key`` (one or several, comma separated) and the fingerprints the AWS
    half read from the instance's console output."""
    given = ctx.options.get("trust_host_key") or []
    if isinstance(given, str):
        given = given.replace(",", " ").split()
    found = list(given) + list(ctx.facts.get("host_fingerprints") or [])
    return [normalise_fingerprint(f) for f in found]


def open_connection(ctx):
    options, facts = ctx.options, ctx.facts
    host = options.get("host") or facts.get("host")
    if not host:
        raise HostError("There is no server to connect to.",
                        "Give --host (with --skip-aws), or let the AWS half create the "
                        "instance first.")
    deployment = ctx.deployment
    conn = Connection(
        host, user=options.get("ssh_user") or deployment.ssh_user or None,
        default_user=deployment.os_profile["ssh_user"], port=options.get("ssh_port"),
        key_filename=options.get("ssh_key") or facts.get("ssh_key_file"),
        pinned=pinned_fingerprints(ctx), allow_agent=options.get("ssh_agent", True),
        redact=ctx.redactor.redact, log=ctx.log.info,
        lock=str(layout_mod.for_deployment(deployment, deployment.host_prefix).lock),
        on_lock_wait=ctx.notice,
    )
    wait = options.get("ssh_wait")
    if wait is None:
        # A new instance needs a few minutes before sshd answers; a running server not.
        wait = 600 if facts.get("instance_created") else 60
    return conn.connect(wait=wait, on_wait=ctx.detail)


class Target:
    """What every host step needs to know, derived once from the context."""

    def __init__(self, ctx, project=None):
        self.ctx = ctx
        self.deployment = ctx.deployment
        self.recipe = recipes.for_deployment(self.deployment)
        self.layout = layout_mod.for_deployment(self.deployment, self.deployment.host_prefix)
        self.broker = self.deployment.effective_broker
        self.options = ctx.options
        self._project = project

    @property
    def project(self):
        if self._project is None:
            self._project = project_mod.inspect()
        return self._project

    def local(self, rel):
        """Text of a file aws_configure rendered into the output directory."""
        path = self.ctx.out_dir / rel
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing.",
                              "Run manage.py aws_configure first (with the same --output).")

    @property
    def state_dir(self):
        """This tool's own records on the server (not the app's)."""
        return PurePosixPath(self.layout.prefix + STATE_DIR)

    @property
    def cache_dir(self):
        """The installs' download caches (the service user's, who runs them)."""
        return PurePosixPath(self.layout.prefix + CACHE_DIR)

    def release_state(self, name):
        """This tool's records of release ``name`` (installed, migrated, source, the
        wheel), kept outside the release so the project's files cannot redirect them."""
        return self.state_dir / "releases" / name

    @property
    def uses_uv(self):
        return not self.options.get("git_url") and self.project.dependency_source == "uv"

    @property
    def uv(self):
        return self.layout.root / "tools" / "uv" / "bin" / "uv"

    @property
    def server(self):
        return self.options.get("server") or ""


class HostStep(Step):
    """A step run on the server over the run's SSH connection."""

    def __init__(self, target):
        self.target = target

    def sh(self, ctx, command, sudo=True, check=True, **kwargs):
        return connection(ctx).run(command, sudo=sudo, check=check, step=self.name, **kwargs)

    def sh_with_progress(self, ctx, command, **kwargs):
        """:meth:`sh` for a long install: what apt, dnf, uv or pip says it is doing is
        passed on, as it runs, to the step's progress line."""
        return self.sh(ctx, command, on_line=ToolProgress(ctx.progress).feed, **kwargs)

    def facts(self, ctx, script):
        """Run a read script as root and parse its ``key=value`` output."""
        return parse_facts(self.sh(ctx, "cd /\n" + script + "\nexit 0").stdout)


# ------------------------------------------------------------------------- steps


class Connect(HostStep):
    """Log in (host key verified first) and check the server runs the deployment's OS."""

    name = "host: ssh"

    def read(self, ctx):
        conn = connection(ctx)
        facts = self.facts(ctx, ". /etc/os-release; printf '%s=%s\\0' id \"$ID\" "
                                "version \"$VERSION_ID\" name \"$PRETTY_NAME\"")
        facts["login"] = conn.label
        facts["host_key"] = conn.host_key_fingerprint
        return facts

    def plan(self, ctx, current):
        want_id, want_version = OS_RELEASE[self.target.recipe.os]
        if (current.get("id"), current.get("version")) != (want_id, want_version):
            hint = (f"Deploy with --os matching the server, or use a {self.target.recipe.label} "
                    "server.")
            if current.get("id") == "amzn" and current.get("version") == "2":
                hint = (f"Amazon Linux 2 is not supported: {recipes.AL2_END_OF_SUPPORT}. "
                        "Move to Amazon Linux 2023 (--os al2023).")
            raise HostError(f"The deployment is for {self.target.recipe.label}, but the server "
                            f"runs {current.get('name') or 'an unknown OS'}.", hint)
        user = connection(ctx).user
        if user == self.target.layout.service_user:
            raise HostError(f"The SSH login user {user} is also the service user: Helios "
                            "would run as a user who may run anything as root.",
                            "Log in as another user (--ssh-user), or deploy with another "
                            "--service-user.")
        return Change(KEEP, f"{current['login']} ({current.get('name')}), host key "
                            f"{current['host_key']}")


class TrustCA(HostStep):
    """The extra CA certificates the server must trust (``ca_bundle``)."""

    name = "host: trusted CA certificates"

    def desired(self):
        path = Path(self.target.options["ca_bundle"]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"Cannot read the CA bundle {path} ({exc.strerror}).",
                              "Give a readable PEM file to --ca-bundle.")
        certs = PEM_RE.findall(text)
        if not certs:
            raise ConfigError(f"{path} holds no PEM certificate.",
                              "Give a file with -----BEGIN CERTIFICATE----- blocks.")
        recipe = self.target.recipe
        return {f"{recipe.ca_anchor_dir}/{recipe.ca_prefix}{i:03d}{recipe.ca_suffix}": c + "\n"
                for i, c in enumerate(dict.fromkeys(certs))}

    def read(self, ctx):
        # Only our own anchors: the directory may hold others' (on AL2023 it is the
        # system's own anchors directory).
        out = self.sh(ctx, f"sha256sum -- {self.target.recipe.ca_anchor_glob} 2>/dev/null "
                           "|| true").stdout
        return {line.split()[1]: line.split()[0]
                for line in out.splitlines() if len(line.split()) == 2}

    def plan(self, ctx, current):
        desired = {p: sha256(t) for p, t in self.desired().items()}
        if desired == current:
            return Change(KEEP)
        return Change(UPDATE if current else CREATE,
                      f"trust {len(desired)} CA certificate(s) from "
                      f"{self.target.options['ca_bundle']}")

    def apply(self, ctx, current, change):
        recipe = self.target.recipe
        self.sh(ctx, f"mkdir -p -- {q(recipe.ca_anchor_dir)} && rm -f -- {recipe.ca_anchor_glob}")
        connection(ctx).put_files(self.desired(), step=self.name)
        self.sh(ctx, self.target.recipe.ca_update, timeout=900)


class Packages(HostStep):
    """The distribution packages: Python 3.13 and headers, PostgreSQL, nginx, broker,
    certbot."""

    name = "host: packages"

    def wanted(self):
        return self.target.recipe.packages(self.target.broker,
                                           git=bool(self.target.options.get("git_url")))

    def read(self, ctx):
        out = self.sh(ctx, self.target.recipe.query_packages(self.wanted())).stdout
        return set(out.split())

    def plan(self, ctx, current):
        missing = [p for p in self.wanted() if p not in current]
        if not missing:
            return Change(KEEP)
        return Change(CREATE, "install " + " ".join(missing))

    def apply(self, ctx, current, change):
        missing = [p for p in self.wanted() if p not in current]
        self.sh_with_progress(ctx, self.target.recipe.install_packages(missing), timeout=3600)


class UvTool(HostStep):
    """uv, which installs from Helios's uv.lock, in a virtualenv of its own."""

    name = "host: uv"

    def read(self, ctx):
        # The version from the package's metadata: starting the binary is slow on a
        # cold, small server, and a read should cost nothing.
        home = self.target.uv.parent.parent
        facts = self.facts(ctx, f"[ -x {q(self.target.uv)} ] || exit 0\n"
                                f"for d in {q(home)}/lib/python3*/site-packages/uv-*.dist-info; "
                                "do v=${d##*/uv-}; printf 'version=%s\\0' \"${v%.dist-info}\"; "
                                "done")
        return facts.get("version", "")

    def plan(self, ctx, current):
        if current:
            return Change(KEEP, f"uv {current}")
        return Change(CREATE, f"install uv into {self.target.uv.parent.parent}")

    def apply(self, ctx, current, change):
        # As root, from wheels only: nothing is built, so no package's code runs.
        home = self.target.uv.parent.parent
        self.sh(ctx, f"umask 022; {recipes.PYTHON} -m venv {q(home)} && "
                     f"PIP_CERT={q(self.target.recipe.ca_bundle)} {q(home)}/bin/pip install "
                     "-q --disable-pip-version-check --only-binary=:all: 'uv>=0.8'",
                timeout=1200)


class ServiceUser(HostStep):
    """The unprivileged user Helios runs as, and the directories of the layout."""

    name = "host: service user and directories"

    def dirs(self):
        """(path, owner, group, mode) of each directory, parents first."""
        lay, user = self.target.layout, self.target.layout.service_user
        return [
            (lay.root, "root", "root", "755"),
            (lay.releases, "root", "root", "755"),
            (lay.shared, user, user, "750"),
            (lay.shared / "media", user, user, "750"),
            (lay.acme_root, "root", "root", "755"),
            (self.target.state_dir, "root", "root", "755"),
            (self.target.state_dir / "releases", "root", "root", "755"),
            # The installs run as the service user: their caches are its own.
            (self.target.cache_dir, "root", "root", "755"),
            (self.target.cache_dir / "uv", user, user, "700"),
            (self.target.cache_dir / "pip", user, user, "700"),
        ]

    def read(self, ctx):
        user = self.target.layout.service_user
        script = fact("user", f"getent passwd -- {q(user)} | cut -d: -f1,6,7")
        script += "".join(fact(f"dir.{d}", f"stat -c '%U %G %a' -- {q(d)} 2>/dev/null")
                          for d, *_ in self.dirs())
        return self.facts(ctx, script)

    def plan(self, ctx, current):
        lay = self.target.layout
        made = f"{lay.service_user}:{lay.root}:{recipes.NOLOGIN}"
        if current.get("user") and current["user"] != made:
            raise HostError(
                f"The server already has a user {lay.service_user} that this tool did not "
                f"make (home and shell {current['user'].split(':', 1)[-1]}, not "
                f"{lay.root}:{recipes.NOLOGIN}): Helios would run with that account's "
                "powers.", "Deploy with another --service-user (the default is helios).")
        details = []
        if not current.get("user"):
            details.append(f"create the system user {lay.service_user}")
        for path, owner, group, mode in self.dirs():
            if current.get(f"dir.{path}") != f"{owner} {group} {mode}":
                details.append(f"directory {path} ({owner}:{group} {mode})")
        if not details:
            return Change(KEEP)
        return Change(CREATE if not current.get("user") else UPDATE, *details)

    def apply(self, ctx, current, change):
        user = self.target.layout.service_user
        commands = []
        if not current.get("user"):
            commands.append(f"useradd --system --user-group --home-dir "
                            f"{q(self.target.layout.root)} --no-create-home "
                            f"--shell {recipes.NOLOGIN} -- {q(user)}")
        caches = {self.target.cache_dir / "uv", self.target.cache_dir / "pip"}
        for path, owner, group, mode in self.dirs():
            if path in caches and current.get(f"dir.{path}") not in (
                    None, "", f"{owner} {group} {mode}"):
                # Filled by root before the installs ran as the service user: start afresh.
                commands.append(f"rm -rf -- {q(path)}")
            commands.append(f"install -d -o {q(owner)} -g {q(group)} -m {mode} -- {q(path)}")
        self.sh(ctx, " && ".join(commands))


class Postgres(HostStep):
    """PostgreSQL running, a non-superuser role owning database ``helios``, reached by the
    service user over the unix socket with peer authentication (no password anywhere)."""

    name = "host: postgresql"
    database = "helios"

    def psql(self, sql, user="postgres", database="postgres"):
        return (f"runuser -u {q(user)} -- psql -XAtq -v ON_ERROR_STOP=1 -d {q(database)} "
                f"-c {q(sql)}")

    def read(self, ctx):
        role = self.target.layout.service_user
        service = self.target.recipe.postgres_service
        lit = role.replace("'", "''")
        sql = ("SELECT coalesce((SELECT CASE WHEN rolsuper THEN 'superuser' ELSE 'role' END "
               f"FROM pg_roles WHERE rolname = '{lit}'), 'none') || ' ' || "
               "coalesce((SELECT pg_get_userbyid(datdba) || ' ' || "
               "pg_encoding_to_char(encoding) FROM pg_database "
               f"WHERE datname = '{self.database}'), 'none')")
        # The cluster's bootstrap superuser (oid 10, "postgres" as packaged) administers it.
        script = (unit_state_script([service])
                  + fact("db", f"{self.psql(sql)} 2>/dev/null")
                  + fact("bootstrap", self.psql("SELECT rolname FROM pg_roles WHERE oid = 10")
                         + " 2>/dev/null")
                  + fact("peer", f"{self.psql('SELECT current_user', role, self.database)} "
                                 "2>/dev/null"))
        return self.facts(ctx, script)

    def check_role(self, current):
        """The service user's role name; HostError if it is the cluster's bootstrap
        superuser, which this step would otherwise demote."""
        role = self.target.layout.service_user
        if role in ("postgres", current.get("bootstrap")):
            raise HostError(f"The service user {role} is PostgreSQL's bootstrap superuser: "
                            "taking superuser away from it would lock the cluster's "
                            "administration.", "Deploy with another --service-user "
                            "(the default is helios).")
        return role

    def plan(self, ctx, current):
        role = self.check_role(current)
        service = self.target.recipe.postgres_service
        details = []
        if current.get(f"enabled.{service}") != "enabled":
            details.append(f"enable {service}")
        if current.get(f"active.{service}") != "active":
            details.append(f"start {service}")
        db = (current.get("db") or "none none").split()
        if db[0] == "none":
            details.append(f"create role {role} (not a superuser)")
        elif db[0] == "superuser":
            details.append(f"take superuser away from role {role}")
        if db[1:] != [role, "UTF8"]:
            details.append(f"database {self.database} owned by {role} (UTF8)")
        if current.get("peer") != role:
            details.append(f"peer authentication for {role}")
        if not details:
            return Change(KEEP)
        return Change(CREATE if db[0] == "none" else UPDATE, *details)

    def apply(self, ctx, current, change):
        role = self.target.layout.service_user
        ident = '"' + role.replace('"', '""') + '"'
        service = self.target.recipe.postgres_service
        init = self.target.recipe.postgres_init()
        self.sh(ctx, f"cd / && {init + ' && ' if init else ''}"
                     f"systemctl enable --now -- {q(service)} >/dev/null 2>&1 && "
                     f"systemctl start -- {q(service)}", timeout=600)
        # Fresh clusters take a moment to accept connections after systemctl returns.
        self.sh(ctx, "cd / && for i in $(seq 60); do "
                     "runuser -u postgres -- psql -XAtq -c 'SELECT 1' >/dev/null 2>&1 && "
                     "exit 0; sleep 1; done; exit 1", timeout=120)
        now = self.read(ctx)
        self.check_role(now)  # the bootstrap superuser is known once the cluster runs
        db = now.get("db", "none none").split()
        statements = []
        if db[0] == "none":
            statements.append(f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        elif db[0] == "superuser":
            statements.append(f"ALTER ROLE {ident} NOSUPERUSER")
        for sql in statements:
            self.sh(ctx, "cd / && " + self.psql(sql))
        if db[1] == "none":
            self.sh(ctx, "cd / && " + self.psql(
                f"CREATE DATABASE {self.database} OWNER {ident} ENCODING 'UTF8' "
                "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0"))
        elif db[1] != role:
            self.sh(ctx, "cd / && " + self.psql(f"ALTER DATABASE {self.database} OWNER TO "
                                                 f"{ident}"))
        elif db[2:] != ["UTF8"]:
            raise HostError(
                f"Database {self.database} exists with encoding {db[2]}, not UTF8.",
                "Helios stores names in any script: dump it, recreate it with "
                "ENCODING 'UTF8' TEMPLATE template0, and restore.")
        if self.read(ctx).get("peer") != role:
            self.sh(ctx, "cd / && hba=$(" + self.psql("SHOW hba_file") + ") && "
                    f"sed -i {q(f'1i local {self.database} {role} peer')} \"$hba\" && "
                    f"systemctl reload {q(service)}")
            if self.read(ctx).get("peer") != role:
                raise HostError(
                    f"{role} still cannot reach database {self.database} by peer "
                    "authentication.", "Look at pg_hba.conf on the server.")


class BrokerConfig(HostStep):
    """The broker's configuration files, written before its package is installed so it
    never listens beyond loopback, not even once."""

    name = "host: broker configuration"

    def files(self):
        return self.target.recipe.broker_files(self.target.broker)

    @property
    def service(self):
        return self.target.recipe.broker_service(self.target.broker)

    def read(self, ctx):
        return self.facts(ctx, file_hashes_script(self.files())
                          + unit_state_script([self.service]))

    def plan(self, ctx, current):
        details = [f"write {p}" for p, t in self.files().items()
                   if current.get(f"sha.{p}") != sha256(t)]
        if not details:
            return Change(KEEP)
        if current.get(f"active.{self.service}") == "active":
            details.append(f"restart {self.service}")
        return Change(UPDATE, *details)

    def apply(self, ctx, current, change):
        connection(ctx).put_files({p: t for p, t in self.files().items()
                                   if current.get(f"sha.{p}") != sha256(t)}, step=self.name)
        command = "systemctl daemon-reload"
        if current.get(f"active.{self.service}") == "active":
            command += " && " + self.target.recipe.broker_restart(self.target.broker)
        self.sh(ctx, command, timeout=900)


class Broker(HostStep):
    """The Celery broker enabled, running and listening on loopback only."""

    name = "host: broker"

    @property
    def service(self):
        return self.target.recipe.broker_service(self.target.broker)

    def read(self, ctx):
        recipe = self.target.recipe
        ports = " or ".join(f"sport = :{p}" for p in recipe.broker_ports(self.target.broker))
        script = unit_state_script([self.service])
        script += fact("listen", f"ss -Hltn {q(f'( {ports} )')} | awk '{{print $4}}' | xargs")
        if self.target.broker == "redis":
            script += fact("bind", f"grep -E '^bind ' -- {q(recipe.redis_conf())} 2>/dev/null "
                                   "| tail -n 1")
        return self.facts(ctx, script)

    @staticmethod
    def exposed(listen):
        return [a for a in listen.split() if not a.startswith(("127.", "[::1]"))]

    def plan(self, ctx, current):
        details = []
        if self.target.broker == "redis" and current.get("bind") != recipes.REDIS_BIND:
            details.append(f"bind redis to loopback ({recipes.REDIS_BIND})")
        if current.get(f"enabled.{self.service}") != "enabled":
            details.append(f"enable {self.service}")
        if current.get(f"active.{self.service}") != "active":
            details.append(f"start {self.service}")
        exposed = self.exposed(current.get("listen", ""))
        if exposed:
            details.append(f"restart {self.service}: it listens on {' '.join(exposed)}")
        if not details:
            return Change(KEEP, f"{self.service} listening on {current.get('listen')}")
        return Change(UPDATE, *details)

    def apply(self, ctx, current, change):
        recipe, broker = self.target.recipe, self.target.broker
        commands = [f"systemctl enable -- {q(self.service)} >/dev/null 2>&1"]
        restart = bool(self.exposed(current.get("listen", "")))
        if broker == "redis" and current.get("bind") != recipes.REDIS_BIND:
            commands.insert(0, f"echo {q(recipes.REDIS_BIND)} >> {q(recipe.redis_conf())}")
            restart = True
        commands.append(recipe.broker_restart(broker) if restart
                        else f"systemctl start -- {q(self.service)}")
        self.sh(ctx, " && ".join(commands), timeout=900)
        listen = self.read(ctx).get("listen", "")
        if self.exposed(listen):
            raise HostError(f"{self.service} still listens on {' '.join(self.exposed(listen))}.",
                            "Look at the broker's configuration on the server.")


class EnvFile(HostStep):
    """The .env aws_configure wrote, as shared/.env: 0600, owned by the service user."""

    name = "host: .env"

    def read(self, ctx):
        path = self.target.layout.env_file
        return self.facts(ctx, fact("sha", f"sha256sum -- {q(path)} 2>/dev/null | cut -c1-64")
                          + fact("stat", f"stat -c '%U %a' -- {q(path)} 2>/dev/null"))

    def plan(self, ctx, current):
        lay = self.target.layout
        text = self.target.local(configure.ENV_NAME)
        if current.get("sha") == sha256(text) and current.get("stat") == \
                f"{lay.service_user} 600":
            return Change(KEEP)
        return Change(UPDATE if current.get("sha") else CREATE,
                      f"{lay.env_file} (0600, {lay.service_user})")

    def apply(self, ctx, current, change):
        lay = self.target.layout
        connection(ctx).put(self.target.local(configure.ENV_NAME), lay.env_file, mode=0o600,
                            owner=lay.service_user, step=self.name)
        # Running services read the file only when they start.
        self.sh(ctx, restart_running())


class Release(HostStep):
    """The code and its virtualenv in a new release directory (not yet serving)."""

    name = "host: release"

    def source(self, ctx):
        """(release id, describe, payload) where payload builds what to upload."""
        cached = ctx.facts.get("host_release_source")
        if cached:
            return cached
        target = self.target
        wheel_name, wheel = release_mod.wheel()
        install = [target.broker, target.recipe.os]
        if target.options.get("git_url"):
            url, git_config = release_mod.split_credentials(target.options["git_url"])
            ref = target.options.get("git_ref") or "HEAD"
            ctx.facts["git_config"] = git_config
            commit = self.remote_commit(ctx, url, ref)
            ident = release_mod.release_id("git", url, commit, sha256(wheel), install)
            source = {"id": ident, "describe": f"{url} {ref} ({commit[:12]})", "git": (url, commit),
                      "wheel": (wheel_name, wheel)}
        else:
            root = target.project.root
            files = release_mod.project_files(root, exclude=[ctx.out_dir])
            digest = release_mod.digest(root, files)
            ident = release_mod.release_id("files", digest, sha256(wheel), install,
                                           target.project.dependency_source)
            source = {"id": ident, "describe": f"{len(files)} files from {root}",
                      "files": (root, files), "wheel": (wheel_name, wheel)}
        ctx.facts["host_release_source"] = source
        return source

    def remote_commit(self, ctx, url, ref):
        """The commit of branch or tag ``ref`` (exactly that name: ``git ls-remote`` alone
        matches the ends of names, so ``main`` would also find ``refs/heads/a/main``)."""
        if COMMIT_RE.fullmatch(ref):
            return ref
        branch, tag, peeled = (("HEAD", None, None) if ref == "HEAD" else
                               (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"))
        names = [n for n in (branch, tag, peeled) if n]
        out = self.sh(ctx, f"cd / && {self.git(ctx)} ls-remote -- {q(url)} {shlex.join(names)}",
                      sudo=False, timeout=120).stdout
        found = {}
        for line in out.splitlines():
            commit, _, name = line.partition("\t")
            if name in names:
                found[name] = commit.strip()
        tagged = found.get(peeled) or found.get(tag)  # an annotated tag's commit is peeled
        if found.get(branch) and tagged:
            raise HostError(f"{url} has both a branch and a tag named {ref!r}.",
                            "Give --git-ref the commit to deploy instead (the branch is at "
                            f"{found[branch]}, the tag at {tagged}).")
        commit = found.get(branch) or tagged
        if not commit:
            raise HostError(f"{url} has no branch or tag named {ref!r}.",
                            "Check --git-url and --git-ref.")
        if not COMMIT_RE.fullmatch(commit):
            raise HostError(f"git ls-remote answered {commit!r} for {ref!r}, which is not a "
                            "commit id.", "Check --git-url: it should name a git repository.")
        return commit

    def git(self, ctx):
        """``git``, reading --git-url's credentials (if any) from a private staged file."""
        config = ctx.facts.get("git_config")
        if not config:
            return "git"
        return f"GIT_CONFIG_GLOBAL={q(connection(ctx).stage(config.encode()))} git"

    def read(self, ctx):
        source = self.source(ctx)
        lay = self.target.layout
        state = self.target.state_dir / "releases"
        script = (f"cd {q(lay.releases)} 2>/dev/null || exit 0\n"
                  f"for d in {STAMP_GLOB}-{source['id']}; do "
                  "[ -d \"$d\" ] && [ ! -L \"$d\" ] || continue; "
                  f"if [ -f {q(state)}/\"$d\"/installed ]; then printf 'ready=%s\\0' \"$d\"; "
                  "else printf 'partial=%s\\0' \"$d\"; fi; done\n")
        return self.facts(ctx, script)

    def plan(self, ctx, current):
        source = self.source(ctx)
        lay = self.target.layout
        if current.get("ready"):
            ready = release_name(current["ready"])
            ctx.facts["host_release_dir"] = str(lay.releases / ready)
            return Change(KEEP, f"release {ready}")
        return Change(CREATE, f"release {source['id']}: {source['describe']}")

    def apply(self, ctx, current, change):
        source = self.source(ctx)
        target, lay = self.target, self.target.layout
        conn = connection(ctx)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
        rel = lay.releases / f"{stamp}-{source['id']}"
        # This tool's records of the release live outside it: the project's files cannot
        # aim them anywhere.
        state = target.release_state(rel.name)
        wheel_name, wheel = source["wheel"]
        staged_wheel = conn.stage(wheel)
        user = q(lay.service_user)
        steps = ["set -e", "umask 022", "cd /"]
        if current.get("partial"):
            partial = release_name(current["partial"])
            steps.append(f"rm -rf -- {q(lay.releases / partial)} "
                         f"{q(target.release_state(partial))}")
        steps += [f"mkdir -- {q(rel)}", f"install -d -m 0755 -- {q(state)}"]
        if "git" in source:
            url, commit = source["git"]
            steps += [f"cd {q(rel)}", "git init -q .",
                      f"{self.git(ctx)} fetch -q --depth 1 -- {q(url)} {q(commit)}",
                      "git checkout -q FETCH_HEAD", "rm -rf .git"]
        else:
            root, files = source["files"]
            staged = conn.stage(release_mod.archive(root, files))
            steps.append(f"tar -xzf {q(staged)} -C {q(rel)} --no-same-owner")
        wheel_path = state / wheel_name
        steps += [f"cd {q(rel)}",
                  "for n in " + shlex.join(release_mod.RESERVED_NAMES) + "; do "
                  "if [ -e \"$n\" ] || [ -L \"$n\" ]; then echo \"The project has its own "
                  "top-level $n, which the deployment makes; remove it from the "
                  "repository.\" >&2; exit 1; fi; done",
                  f"install -m 0644 -T -- {q(staged_wheel)} {q(wheel_path)}",
                  "ln -s ../../shared/media media",
                  # The install runs the project's build code: as the service user, in a
                  # release it owns for that time only.
                  f"chown -R -h -- {user}:{user} {q(rel)}"]
        extras = [str(wheel_path), *EXTRA_PACKAGES] + (
            ["redis"] if target.broker == "redis" else [])
        venv = f"{rel}/.venv"
        if "git" in source:
            steps.append(f"if [ -f uv.lock ]; then {self.uv_commands(venv, extras)}; "
                         f"else {self.pip_commands(venv, extras)}; fi")
        elif target.uses_uv:
            steps.append(self.uv_commands(venv, extras))
        else:
            steps.append(self.pip_commands(venv, extras))
        steps += [f"{self.as_service_user()} {q(venv)}/bin/python -m compileall -q "
                  f"-x '/\\.venv/' {q(rel)} >/dev/null",
                  # Then the code is root's again: the app cannot change what it runs.
                  f"chown -R -h -- root:root {q(rel)}",
                  f"printf '%s\\n' {q(source['describe'])} > {q(state / 'source')}",
                  f"touch -- {q(state / 'installed')}"]
        self.sh_with_progress(ctx, "\n".join(steps), timeout=3600)
        ctx.facts["host_release_dir"] = str(rel)

    def as_service_user(self):
        """The start of a command that runs as the service user, at home."""
        lay = self.target.layout
        return f"runuser -u {q(lay.service_user)} -- env HOME={q(lay.root)}"

    def uv_commands(self, venv, extras):
        cache = q(self.target.cache_dir / "uv")
        env = (f"{self.as_service_user()} UV_PYTHON={recipes.PYTHON} UV_PYTHON_DOWNLOADS=never "
               f"UV_NATIVE_TLS=1 UV_CACHE_DIR={cache} UV_COMPILE_BYTECODE=1 "
               f"UV_PROJECT_ENVIRONMENT={q(venv)}")
        uv = q(self.target.uv)
        return (f"{env} {uv} sync --frozen --no-dev && "
                f"{env} {uv} pip install --python {q(venv)}/bin/python "
                f"-- {shlex.join(extras)}")

    def pip_commands(self, venv, extras):
        user = self.as_service_user()
        pip = f"{user} PIP_CERT={q(self.target.recipe.ca_bundle)} " \
              f"PIP_CACHE_DIR={q(self.target.cache_dir / 'pip')} {q(venv)}/bin/pip"
        return (f"{user} {recipes.PYTHON} -m venv {q(venv)} && "
                f"{pip} install --disable-pip-version-check -r requirements.txt "
                f"-- {shlex.join(extras)}")


class Migrate(HostStep):
    """``manage.py migrate`` from the new release, as the service user with the .env."""

    name = "host: migrate"
    fingerprint_sql = ("SELECT md5(coalesce(string_agg(app || '.' || name, ',' "
                       "ORDER BY app, name), '')) FROM django_migrations")

    def release_dir(self, ctx):
        return PurePosixPath(ctx.facts["host_release_dir"]) if ctx.facts.get(
            "host_release_dir") else None

    def read(self, ctx):
        rel = self.release_dir(ctx)
        script = fact("db", f"runuser -u postgres -- psql -XAtq -d {q(Postgres.database)} "
                            f"-c {q(self.fingerprint_sql)} 2>/dev/null")
        if rel:
            script += fact("done", f"cat -- {q(self.marker(rel))} 2>/dev/null")
        return self.facts(ctx, script)

    def marker(self, rel):
        return self.target.release_state(rel.name) / "migrated"

    def plan(self, ctx, current):
        rel = self.release_dir(ctx)
        if rel is not None and current.get("db") and current.get("done") == current["db"]:
            return Change(KEEP)
        return Change(UPDATE, f"migrate the database with release {rel.name if rel else 'new'}")

    def manage(self, rel, *args):
        lay = self.target.layout
        return (f"cd {q(rel)} && runuser -u {q(lay.service_user)} -- env "
                f"HELIOS_ENV_FILE={q(lay.env_file)} "
                f"DJANGO_SETTINGS_MODULE={layout_mod.SETTINGS_MODULE} "
                f"{q(rel)}/.venv/bin/python manage.py {shlex.join(args)}")

    def apply(self, ctx, current, change):
        rel = self.release_dir(ctx)
        self.sh(ctx, self.manage(rel, "migrate", "--no-input"), timeout=1800)
        fingerprint = self.read(ctx)["db"]
        self.sh(ctx, f"printf '%s\\n' {q(fingerprint)} > {q(self.marker(rel))}")


class Switch(HostStep):
    """Point ``current`` at the new release, restart the app, prune old releases."""

    name = "host: switch release"

    def read(self, ctx):
        lay = self.target.layout
        return self.facts(ctx, fact("current", f"readlink -- {q(lay.current)}"))

    def wanted(self, ctx):
        release_dir = ctx.facts.get("host_release_dir")
        return f"releases/{PurePosixPath(release_dir).name}" if release_dir else None

    @staticmethod
    def serving(current):
        """The name of the release ``current`` points at (checked), or None."""
        link = current.get("current")
        if not link:
            return None
        directory, _, name = link.partition("/")
        if directory != "releases" or not RELEASE_NAME_RE.fullmatch(name):
            raise HostError(f"The server's current link points at {link!r}, not at a "
                            "release this tool made.",
                            "Look at it on the server; remove it if it is not serving, or "
                            "point it at releases/<release> by hand.")
        return name

    def plan(self, ctx, current):
        self.serving(current)
        wanted = self.wanted(ctx) or "the new release"
        if current.get("current") == wanted:
            return Change(KEEP, f"current -> {wanted}")
        was = current.get("current") or "nothing"
        return Change(UPDATE, f"current -> {wanted} (was {was})")

    def apply(self, ctx, current, change):
        lay = self.target.layout
        keep = int(self.target.options.get("keep_releases") or KEEP_RELEASES)
        wanted = self.wanted(ctx)
        new_link = f"{lay.current}.helios-aws-new"
        serving = self.serving(current)
        # Newest first by name (names start with a UTC time stamp); the serving one and the
        # previous one always stay. Only names of the release form are listed, one per
        # NUL-terminated record, then this tool's records of the releases removed.
        state = self.target.state_dir / "releases"
        self.sh(ctx, "\n".join([
            "set -e",
            f"ln -sfn -- {q(wanted)} {q(new_link)}",
            f"mv -fT -- {q(new_link)} {q(lay.current)}",
            restart_running(),
            f"cd {q(lay.releases)}",
            f"for d in {RELEASE_GLOB}; do [ -d \"$d\" ] && [ ! -L \"$d\" ] && "
            "printf '%s\\0' \"$d\"; done "
            f"| sort -rz | grep -zvxF -- {q(PurePosixPath(wanted).name)} "
            + (f"| grep -zvxF -- {q(serving)} " if serving else "")
            + f"| tail -zn +{max(keep - 1, 1)} | xargs -0r rm -rf --",
            f"cd {q(state)}",
            f"for d in {RELEASE_GLOB}; do [ -d {q(lay.releases)}/\"$d\" ] || rm -rf -- \"$d\"; "
            "done",
        ]))


class Units(HostStep):
    """The systemd units aws_configure rendered: installed, enabled, started."""

    name = "host: systemd units"

    def files(self):
        out = self.target.ctx.out_dir / "systemd"
        if not out.is_dir():
            raise ConfigError(f"{out} is missing.", "Run manage.py aws_configure first.")
        return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.is_file()}

    def read(self, ctx):
        unit_dir = self.target.layout.unit_dir
        paths = [unit_dir / name for name in self.files()]
        return self.facts(ctx, file_hashes_script(paths) + unit_state_script(APP_UNITS))

    def plan(self, ctx, current):
        unit_dir = self.target.layout.unit_dir
        details = [f"install {name}" for name, text in self.files().items()
                   if current.get(f"sha.{unit_dir / name}") != sha256(text)]
        for unit in APP_UNITS:
            if current.get(f"enabled.{unit}") != "enabled":
                details.append(f"enable {unit}")
            if current.get(f"active.{unit}") != "active":
                details.append(f"start {unit}")
        if not details:
            return Change(KEEP)
        fresh = not any(current.get(f"sha.{unit_dir / n}") for n in self.files())
        return Change(CREATE if fresh else UPDATE, *details)

    def apply(self, ctx, current, change):
        unit_dir = self.target.layout.unit_dir
        changed = [name for name, text in self.files().items()
                   if current.get(f"sha.{unit_dir / name}") != sha256(text)]
        if changed:
            connection(ctx).put_files({unit_dir / n: self.files()[n] for n in changed},
                                      step=self.name)
        commands = ["set -e", "systemctl daemon-reload",
                    f"systemctl enable {' '.join(APP_UNITS)} >/dev/null 2>&1"]
        if "gunicorn.socket" in changed and current.get("active.gunicorn.socket") == "active":
            # A socket cannot be restarted under its running service.
            commands.append("systemctl stop gunicorn.service gunicorn.socket")
        restart = [u for u in APP_SERVICES if u in changed]
        if restart:
            commands.append(f"systemctl try-restart {' '.join(restart)}")
        commands.append(f"systemctl start {' '.join(APP_UNITS)}")
        self.sh(ctx, "\n".join(commands), timeout=600)


def install_site_script(site, staged):
    """Put ``staged`` in place as ``site`` only if ``nginx -t`` accepts the result; the
    previous file is restored otherwise, so nginx is never reloaded with a bad file."""
    keep = f"{site}.helios-aws-previous"
    return "\n".join([
        "set -e",
        f"site={q(site)}; keep={q(keep)}",
        "if [ -e \"$site\" ]; then cp -p \"$site\" \"$keep\"; else rm -f \"$keep\"; fi",
        f"install -m 0644 -o root -g root {q(staged)} \"$site\"",
        "if ! out=$(nginx -t 2>&1); then",
        "  if [ -e \"$keep\" ]; then mv -f \"$keep\" \"$site\"; else rm -f \"$site\"; fi",
        "  echo \"$out\" >&2; echo 'nginx -t rejected the new site; the previous one is kept.' >&2",
        "  exit 1",
        "fi",
        "rm -f \"$keep\"",
        "systemctl enable nginx >/dev/null 2>&1",
        "if systemctl is-active --quiet nginx; then systemctl reload nginx; "
        "else systemctl start nginx; fi",
    ])


class NginxSite(HostStep):
    """The nginx site: first plain HTTP (for the ACME challenge), then HTTPS."""

    def __init__(self, target, https):
        super().__init__(target)
        self.https = https
        self.name = f"host: nginx site ({'HTTPS' if https else 'HTTP'})"

    def text(self, https):
        return self.target.local(f"nginx/helios-{'https' if https else 'http'}.conf")

    def read(self, ctx):
        lay = self.target.layout
        return self.facts(ctx, file_hashes_script([lay.nginx_site])
                          + unit_state_script(["nginx.service"])
                          + fact("cert", f"[ -s {q(lay.certificate)} ] && echo yes"))

    def plan(self, ctx, current):
        lay = self.target.layout
        have = current.get(f"sha.{lay.nginx_site}")
        running = (current.get("active.nginx.service") == "active"
                   and current.get("enabled.nginx.service") == "enabled")
        if self.https:
            if have == sha256(self.text(True)) and running:
                return Change(KEEP)
            return Change(UPDATE, f"{lay.nginx_site}: HTTPS, HTTP redirected")
        # Once the HTTPS site serves, the HTTP one is not wanted back.
        if running and (have == sha256(self.text(False)) or (
                have == sha256(self.text(True)) and current.get("cert") == "yes")):
            return Change(KEEP)
        return Change(CREATE if not have else UPDATE,
                      f"{lay.nginx_site}: HTTP (ACME challenges, no certificate yet)")

    def apply(self, ctx, current, change):
        if self.https and current.get("cert") != "yes":
            raise HostError(f"No certificate at {self.target.layout.certificate}.",
                            "The certificate step must succeed first.")
        conn = connection(ctx)
        staged = conn.stage(self.text(self.https).encode())
        self.sh(ctx, install_site_script(self.target.layout.nginx_site, staged), timeout=300)


class Certificate(HostStep):
    """The TLS certificate, from certbot's webroot challenge through the HTTP site."""

    name = "host: certificate"

    def renewal_conf(self):
        return f"/etc/letsencrypt/renewal/{self.target.deployment.domain}.conf"

    def read(self, ctx):
        lay = self.target.layout
        return self.facts(ctx, fact("cert", f"[ -s {q(lay.certificate)} ] && echo yes")
                          + fact("server", "sed -n 's/^server *= *//p' -- "
                                           f"{q(self.renewal_conf())} 2>/dev/null"))

    def plan(self, ctx, current):
        domain = self.target.deployment.domain
        if current.get("cert") != "yes":
            return Change(CREATE, f"certificate for {domain} from "
                                  f"{self.target.server or 'the default ACME server'}")
        if self.target.server and current.get("server") != self.target.server:
            return Change(UPDATE, f"certificate for {domain} from {self.target.server} "
                                  f"(was {current.get('server') or 'another server'})")
        return Change(KEEP, f"certificate for {domain}")

    def certbot_env(self):
        return f"REQUESTS_CA_BUNDLE={q(self.target.recipe.ca_bundle)}"

    def apply(self, ctx, current, change):
        target = self.target
        domain = target.deployment.domain
        # Every value joined to its option: none can be read as an option of its own.
        args = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--webroot",
                f"--webroot-path={target.layout.acme_root}", f"--domains={domain}",
                f"--cert-name={domain}", f"--email={target.deployment.email}"]
        if target.server:
            args.append(f"--server={target.server}")
        if change.action == UPDATE:
            args.append("--force-renewal")
        self.sh(ctx, f"cd / && {self.certbot_env()} {shlex.join(args)}", timeout=600)


class Renewal(HostStep):
    """Automatic renewal: the timer enabled (the distribution's own timer off, ours also
    reloads nginx), and ``certbot renew --dry-run`` passing."""

    name = "host: certificate renewal"

    def marker(self):
        return self.target.state_dir / "renew-dry-run"

    def proof_script(self):
        """Prints the digest of what a dry run vouches for: certificate and renewal conf."""
        lay = self.target.layout
        conf = Certificate(self.target).renewal_conf()
        return f"cat -- {q(lay.certificate)} {q(conf)} 2>/dev/null | sha256sum | cut -c1-64"

    def read(self, ctx):
        distro = self.target.recipe.distro_renew_timer
        return self.facts(ctx, unit_state_script([RENEW_TIMER, distro])
                          + fact("proof", self.proof_script())
                          + fact("done", f"cat -- {q(self.marker())} 2>/dev/null"))

    def plan(self, ctx, current):
        distro = self.target.recipe.distro_renew_timer
        details = []
        if current.get(f"enabled.{RENEW_TIMER}") != "enabled" or \
                current.get(f"active.{RENEW_TIMER}") != "active":
            details.append(f"enable and start {RENEW_TIMER}")
        if current.get(f"enabled.{distro}") == "enabled" or \
                current.get(f"active.{distro}") == "active":
            details.append(f"disable {distro} ({RENEW_TIMER} replaces it)")
        if current.get("done") != current.get("proof"):
            details.append("certbot renew --dry-run")
        if not details:
            return Change(KEEP)
        return Change(UPDATE, *details)

    def apply(self, ctx, current, change):
        distro = self.target.recipe.distro_renew_timer
        env = Certificate(self.target).certbot_env()
        domain = self.target.deployment.domain
        # A dry run goes to the default CA's staging server unless told otherwise.
        server = [f"--server={self.target.server}"] if self.target.server else []
        self.sh(ctx, "\n".join([
            "set -e", "cd /",
            f"systemctl disable --now -- {q(distro)} >/dev/null 2>&1 || true",
            f"systemctl enable --now -- {q(RENEW_TIMER)} >/dev/null 2>&1",
            f"{env} certbot renew --dry-run --non-interactive --no-random-sleep-on-renew "
            + shlex.join([f"--cert-name={domain}", *server]),
            f"{self.proof_script()} > {q(self.marker())}",
        ]), timeout=900)


class Liveness(HostStep):
    """A request through nginx, over HTTPS, to Helios's cheapest page answers 200."""

    name = "host: liveness"
    wait_seconds = 180

    def probe(self):
        target = self.target
        domain, port = target.deployment.domain, target.deployment.https_port
        suffix = "" if port == 443 else f":{port}"
        # The certificate on disk is the trust anchor: this checks that nginx serves the
        # one certbot obtained, for this name, whatever CA issued it.
        return (f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 60 "
                f"--cacert {q(target.layout.certificate)} "
                f"--resolve {q(f'{domain}:{port}:127.0.0.1')} "
                f"{q(f'https://{domain}{suffix}{LIVENESS_PATH}')}")

    def read(self, ctx):
        result = self.sh(ctx, self.probe(), check=False, timeout=90)
        return {"status": result.stdout.strip()[-3:], "error": result.stderr.strip()}

    def plan(self, ctx, current):
        url = f"https://{self.target.deployment.domain}{LIVENESS_PATH}"
        if current["status"] == "200":
            return Change(KEEP, f"{url} -> 200")
        return Change(UPDATE, f"wait for {url} (now: {current['status'] or current['error']})")

    def apply(self, ctx, current, change):
        script = (f"for i in $(seq {self.wait_seconds // 5}); do "
                  f"s=$({self.probe()} 2>/dev/null); [ \"$s\" = 200 ] && exit 0; sleep 5; "
                  "done; echo \"last status: $s\"; "
                  "journalctl -u gunicorn.service -n 30 --no-pager; exit 1")
        self.sh(ctx, script, timeout=self.wait_seconds + 120)
        return UNCHANGED


# ------------------------------------------------------------------------- entry point


def check_options(ctx):
    """The host half's own options that reach commands on the server, checked before
    anything runs there."""
    options = ctx.options
    if options.get("git_url"):
        params.validate_git_url(options["git_url"])
        params.validate_git_ref(options.get("git_ref") or "HEAD")
    elif options.get("git_ref"):
        raise ConfigError("--git-ref needs --git-url.",
                          "Give the repository with --git-url, or leave --git-ref out to "
                          "deploy the local files.")
    if options.get("ssh_user"):
        params.validate_service_user(ctx.deployment.service_user, options["ssh_user"])


def steps(ctx, project=None):
    """The host steps for ``ctx.deployment``, in order (see the module docstring)."""
    from .backups import BackupTimer  # it builds on this module's HostStep

    target = Target(ctx, project)
    check_options(ctx)
    if not target.options.get("git_url"):
        wanted = tuple(int(n) for n in target.project.python.split("."))
        if wanted > recipes.PYTHON_VERSION:
            raise ConfigError(
                f"The project requires Python {target.project.python}; the host recipes "
                f"install Python {'.'.join(map(str, recipes.PYTHON_VERSION))}.",
                "Deploy a Helios release that runs on Python 3.13.")
    from .preflight import Preflight  # it builds on HostStep, defined here

    result = [Connect(target), Preflight(target)]
    if target.options.get("ca_bundle"):
        result.append(TrustCA(target))
    if target.recipe.broker_files(target.broker):
        result.append(BrokerConfig(target))
    result.append(Packages(target))
    if target.options.get("git_url") or target.uses_uv:
        result.append(UvTool(target))
    result += [
        ServiceUser(target), Postgres(target), Broker(target), EnvFile(target),
        Release(target), Migrate(target), Switch(target), Units(target),
        NginxSite(target, https=False), Certificate(target), NginxSite(target, https=True),
        Renewal(target), Liveness(target),
    ]
    result.append(BackupTimer(target))
    return result
