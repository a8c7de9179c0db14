"""The last step: the site answers on its liveness page through nginx."""

from ..engine import Change, KEEP, UNCHANGED, UPDATE
from .base import LIVENESS_PATH, HostStep, q


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

    def wait_script(self):
        """Wait up to ``wait_seconds`` for a 200; else print the last status (first line)
        and gunicorn's journal, and exit 1."""
        return (f"for i in $(seq {max(self.wait_seconds // 5, 1)}); do "
                f"s=$({self.probe()} 2>/dev/null); [ \"$s\" = 200 ] && exit 0; sleep 5; "
                "done; echo \"last status: ${s:-none}\"; "
                "journalctl -u gunicorn.service -n 30 --no-pager; exit 1")

    def apply(self, ctx, current, change):
        self.sh(ctx, self.wait_script(), timeout=self.wait_seconds + 120)
        return UNCHANGED
