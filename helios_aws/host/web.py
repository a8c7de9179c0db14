"""What serves the site: the systemd units, the nginx sites, the certificate and its
renewal."""

import shlex

from ..engine import CREATE, Change, KEEP, UPDATE
from ..errors import ConfigError, HostError
from .base import (
    APP_SERVICES, APP_UNITS, RENEW_TIMER, HostStep, connection, fact,
    file_hashes_script, q, sha256, unit_state_script,
)


class Units(HostStep):
    """The systemd units aws_configure rendered: installed, enabled, started."""

    name = "host: systemd units"

    def files(self):
        out = self.target.ctx.out_dir / "systemd"
        if not out.is_dir():
            raise ConfigError(f"{out} is missing.", "Run manage.py aws_configure first.")
        return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.is_file()}

    def read(self, ctx):
        lay = self.target.layout
        paths = [lay.unit_dir / name for name in self.files()]
        legacy = q(lay.legacy_env_file)
        return self.facts(ctx, file_hashes_script(paths) + unit_state_script(APP_UNITS)
                          + fact("legacy_env", f"[ -e {legacy} ] || [ -L {legacy} ] && echo yes"))

    def plan(self, ctx, current):
        lay = self.target.layout
        unit_dir = lay.unit_dir
        details = [f"install {name}" for name, text in self.files().items()
                   if current.get(f"sha.{unit_dir / name}") != sha256(text)]
        if current.get("legacy_env"):
            details.append(f"remove {lay.legacy_env_file} (the units read {lay.env_file})")
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
        if current.get("legacy_env"):
            # As the service user, in its own directory: whatever stands there goes, and
            # nothing it points to.
            lay = self.target.layout
            commands.append(f"runuser -u {q(lay.service_user)} -- env -i PATH=/usr/bin:/bin "
                            f"rm -f -- {q(lay.legacy_env_file)}")
        self.sh(ctx, "\n".join(commands), timeout=600)


def install_site_script(site, staged, default_site):
    """Put ``staged`` in place as ``site`` only if ``nginx -t`` accepts the result; the
    previous file is restored otherwise, so nginx is never reloaded with a bad file.
    The distribution's ``default_site`` link is removed first (the site has its own
    default server; the file it links to stays, so `ln -s` enables it again)."""
    keep = f"{site}.helios-aws-previous"
    return "\n".join([
        "set -e",
        f"site={q(site)}; keep={q(keep)}",
        f"rm -f {q(default_site)}",
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
                          + fact("cert", f"[ -s {q(lay.certificate)} ] && echo yes")
                          + fact("default_site", f"[ -e {q(lay.nginx_default_site)} ] "
                                                 f"|| [ -L {q(lay.nginx_default_site)} ] "
                                                 "&& echo yes"))

    def plan(self, ctx, current):
        lay = self.target.layout
        have = current.get(f"sha.{lay.nginx_site}")
        running = (current.get("active.nginx.service") == "active"
                   and current.get("enabled.nginx.service") == "enabled")
        default_site = current.get("default_site") == "yes"
        extra = ([f"disable the distribution's default site {lay.nginx_default_site} (it "
                  "answers any other name, the bare IP included)"] if default_site else [])
        if self.https:
            if have == sha256(self.text(True)) and running and not default_site:
                return Change(KEEP)
            return Change(UPDATE, f"{lay.nginx_site}: HTTPS, HTTP redirected", *extra)
        # Once the HTTPS site serves, the HTTP one is not wanted back (the HTTPS step
        # disables the default site then).
        if running and have == sha256(self.text(True)) and current.get("cert") == "yes":
            return Change(KEEP)
        if running and have == sha256(self.text(False)) and not default_site:
            return Change(KEEP)
        return Change(CREATE if not have else UPDATE,
                      f"{lay.nginx_site}: HTTP (ACME challenges, no certificate yet)", *extra)

    def apply(self, ctx, current, change):
        if self.https and current.get("cert") != "yes":
            raise HostError(f"No certificate at {self.target.layout.certificate}.",
                            "The certificate step must succeed first.")
        conn = connection(ctx)
        staged = conn.stage(self.text(self.https).encode())
        lay = self.target.layout
        self.sh(ctx, install_site_script(lay.nginx_site, staged, lay.nginx_default_site),
                timeout=300)


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
