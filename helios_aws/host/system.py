"""The server itself: the login and its OS, trusted CA certificates, the packages,
uv, root's own helios-aws, and the service user with the layout's directories."""

import shlex
from pathlib import Path

from ..engine import CREATE, Change, KEEP, UPDATE
from ..errors import ConfigError, HostError
from . import recipes, release as release_mod
from .base import OS_RELEASE, PEM_RE, HostStep, connection, fact, q, sha256


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


class RootTool(HostStep):
    """helios-aws in root's own virtualenv, for what root runs on the server
    (``helios_aws.rootside``: drills and restores). A release is built as the service
    user, so root never runs code from one; this environment is root's from the start
    and installed from wheels only (nothing is built, so no package's code runs)."""

    name = "host: root's helios-aws"
    # What helios_aws.rootside imports beyond the standard library and helios_aws.
    PACKAGES = ("boto3",)

    @property
    def home(self):
        return self.target.layout.root_tool

    def wanted(self):
        name, data = release_mod.wheel()
        return name, data, sha256(data + " ".join(self.PACKAGES).encode())

    def read(self, ctx):
        return self.facts(ctx, fact("installed", f"cat -- {q(self.home)}/installed "
                                                 "2>/dev/null"))

    def plan(self, ctx, current):
        if current.get("installed") == self.wanted()[2]:
            return Change(KEEP, f"{self.home}")
        return Change(UPDATE if current.get("installed") else CREATE,
                      f"install helios-aws and {', '.join(self.PACKAGES)} into {self.home}")

    def apply(self, ctx, current, change):
        name, data, digest = self.wanted()
        staged = connection(ctx).stage(data)
        home = q(self.home)
        pip = (f"PIP_CERT={q(self.target.recipe.ca_bundle)} {home}/bin/pip install -q "
               "--disable-pip-version-check --only-binary=:all:")
        self.sh(ctx, "\n".join([
            "set -e", "umask 022", "cd /",
            f"rm -rf -- {home}",
            f"{recipes.PYTHON} -m venv -- {home}",
            f"install -m 0644 -T -- {q(staged)} {home}/{q(name)}",
            f"{pip} --no-deps -- {home}/{q(name)}",
            f"{pip} -- {shlex.join(self.PACKAGES)}",
            f"rm -f -- {home}/{q(name)} {q(staged)}",
            f"printf '%s\\n' {q(digest)} > {home}/installed",
        ]), timeout=1200)


class ServiceUser(HostStep):
    """The unprivileged user Helios runs as, and the directories of the layout."""

    name = "host: service user and directories"

    def dirs(self):
        """(path, owner, group, mode) of each directory, parents first."""
        lay, user = self.target.layout, self.target.layout.service_user
        return [
            (lay.root, "root", "root", "755"),
            (lay.releases, "root", "root", "755"),
            (lay.config, "root", user, "750"),
            (lay.shared, user, user, "750"),
            (lay.shared_media, user, user, "750"),
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
        script += "".join(fact(f"dir.{d}", f"stat -c '%U %G %a %F' -- {q(d)} 2>/dev/null")
                          for d, *_ in self.dirs())
        return self.facts(ctx, script)

    def users_own(self):
        """The directories inside one the service user owns: it may have replaced them
        with a link, so root neither follows nor changes them (made as that user)."""
        lay, user = self.target.layout, self.target.layout.service_user
        owned = {path for path, owner, *_ in self.dirs() if owner == user}
        return {path for path, *_ in self.dirs() if path.parent in owned}

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
        for path in sorted(self.users_own()):
            kind = current.get(f"dir.{path}", "").split(" ", 3)[3:]
            if kind and kind != ["directory"]:
                raise HostError(
                    f"{path} is a {kind[0]}, not a directory. The service user may have put "
                    "it there; root neither follows nor replaces it.",
                    f"Look at what it is; move it away (its content, if it is the uploaded "
                    f"files, into a directory {path}), then run aws_provision again.")
        for path, owner, group, mode in self.dirs():
            if " ".join(current.get(f"dir.{path}", "").split(" ")[:3]) != \
                    f"{owner} {group} {mode}":
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
        users_own = self.users_own()
        for path, owner, group, mode in self.dirs():
            stated = " ".join(current.get(f"dir.{path}", "").split(" ")[:3])
            if path in caches and stated not in ("", f"{owner} {group} {mode}"):
                # Filled by root before the installs ran as the service user: start afresh.
                commands.append(f"rm -rf -- {q(path)}")
            if path in users_own:
                commands.append(f"runuser -u {q(user)} -- env -i PATH=/usr/bin:/bin "
                                f"sh -c 'mkdir -p -m {mode} -- \"$1\" && chmod {mode} -- "
                                f"\"$1\"' sh {q(path)}")
            else:
                commands.append(f"install -d -o {q(owner)} -g {q(group)} -m {mode} -- "
                                f"{q(path)}")
        self.sh(ctx, " && ".join(commands))
