"""Read-only checks on the server before the host half changes anything.

The ``Connect`` step has already matched ``/etc/os-release`` with ``--os``. What else
would stop the deploy half-way is checked here, at once, each with what to do:
python3.13 must be installed or installable (an older Amazon Linux 2023 AMI's repository
lacks it), and SELinux must not be enforcing (the units, the release tree and the nginx
paths this tool writes carry no SELinux labels).
"""

from ..engine import KEEP, Change
from ..errors import HostError
from . import recipes
from .base import HostStep, fact, q


class Preflight(HostStep):
    """python3.13 installed or installable, and SELinux not enforcing."""

    name = "host: preflight"

    def read(self, ctx):
        recipe = self.target.recipe
        return self.facts(ctx, fact("python", f"if [ -x {q(recipes.PYTHON)} ]; then echo "
                                              f"installed; else {{ {recipe.python_query()}; }}; "
                                              "fi")
                          + fact("selinux", "getenforce 2>/dev/null"))

    def plan(self, ctx, current):
        recipe = self.target.recipe
        python = current.get("python") or "unknown"
        if python == "missing":
            raise HostError(f"python3.13 cannot be installed on this {recipe.label} server.",
                            recipe.python_hint)
        selinux = current.get("selinux") or "not present"
        if selinux.lower() == "enforcing":
            raise HostError(
                "SELinux is enforcing on the server: the systemd units, the release tree "
                "and the nginx paths this tool installs carry no SELinux labels, so the "
                "services would be denied.",
                "Set SELinux to permissive (Amazon Linux 2023's default): `sudo setenforce "
                "0` and SELINUX=permissive in /etc/selinux/config; or use --os debian13.")
        if python == "unknown":
            python = "python3.13 to be installed (the package index is not read yet)"
        else:
            python = f"python3.13 {python}"
        return Change(KEEP, f"{python}; SELinux {selinux.lower()}")
