"""Where things live on the host: one place for every path the templates and steps share."""

import dataclasses
from pathlib import PurePosixPath

SETTINGS_MODULE = "helios_aws.settings_overrides.production"


@dataclasses.dataclass(frozen=True)
class HostLayout:
    """Paths on the server.

    Releases are uploaded side by side under ``releases/`` and ``current`` is a symlink
    switched only once a release is installed, so a failed deploy leaves the previous
    release serving. Each release carries its own virtualenv (``.venv``); what outlives
    releases (the .env, uploaded media) is under ``shared/``.

    ``prefix`` moves every system path under another directory: it lets a local rehearsal
    or a test run nginx and gunicorn with the generated files without touching ``/etc``.
    """

    app_dir: str
    service_user: str
    web_user: str
    domain: str
    prefix: str = ""

    def _p(self, path):
        return PurePosixPath(self.prefix + path) if self.prefix else PurePosixPath(path)

    @property
    def root(self):
        return self._p(self.app_dir)

    @property
    def releases(self):
        return self.root / "releases"

    @property
    def current(self):
        return self.root / "current"

    @property
    def shared(self):
        return self.root / "shared"

    @property
    def config(self):
        """root's directory for the deployed .env: the service user may read in it
        (root:service user, 0750), never add, rename or remove, so the file systemd
        reads as root for the units (``EnvironmentFile=``) cannot be a link it planted."""
        return self.root / "config"

    @property
    def env_file(self):
        return self.config / ".env"

    @property
    def legacy_env_file(self):
        """Where the .env was kept before: in shared/, which the service user writes.
        Removed once the units read the new one."""
        return self.shared / ".env"

    @property
    def shared_media(self):
        """Uploaded files: outside every release (each release links ``media`` here)."""
        return self.shared / "media"

    @property
    def venv_bin(self):
        return self.current / ".venv" / "bin"

    @property
    def root_tool(self):
        """root's own virtualenv with helios-aws, for what root runs (never a release's,
        which the service user builds)."""
        return self.root / "tools" / "helios-aws"

    @property
    def state_dir(self):
        return self._p("/var/lib/helios")

    @property
    def lock(self):
        """Held by a provisioning run's root shell: one run at a time per host."""
        return self._p("/run/helios-aws.lock")

    @property
    def socket(self):
        return self._p("/run/gunicorn.sock")

    @property
    def acme_root(self):
        return self._p("/var/www/acme")

    @property
    def unit_dir(self):
        return self._p("/etc/systemd/system")

    @property
    def nginx_site(self):
        return self._p("/etc/nginx/conf.d/helios.conf")

    @property
    def nginx_default_site(self):
        """Debian's default site: it answers any unknown name with "Welcome to nginx!"
        (Amazon Linux's, inside nginx.conf, is no default_server and yields to ours)."""
        return self._p("/etc/nginx/sites-enabled/default")

    @property
    def cert_dir(self):
        return self._p("/etc/letsencrypt/live") / self.domain

    @property
    def certificate(self):
        return self.cert_dir / "fullchain.pem"

    @property
    def certificate_key(self):
        return self.cert_dir / "privkey.pem"


def for_deployment(deployment, prefix=""):
    return HostLayout(
        app_dir=deployment.app_dir.rstrip("/"),
        service_user=deployment.service_user,
        web_user=deployment.os_profile["web_user"],
        domain=deployment.domain,
        prefix=prefix.rstrip("/"),
    )
