"""The host half of ``aws_provision``: steps that turn a bare server into a serving Helios.

``steps(ctx)`` returns them in order; the steps themselves live by concern beside this
module, as the AWS half's do (``base`` holds what they share; ``preflight``, ``system``,
``database``, ``broker``, ``deploy``, ``web``, ``checks``, ``backups``, ``seal``); ``helios_aws.provision`` runs them after the AWS
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

from .. import params
from ..errors import ConfigError
from . import recipes
from .backups import BackupTimer
from .base import Target
from .broker import Broker, BrokerConfig
from .checks import Liveness
from .database import Postgres
from .deploy import EnvFile, Migrate, Release, Switch
from .preflight import Preflight
from .seal import SealTimer
from .system import Connect, Packages, RootTool, ServiceUser, TrustCA, UvTool
from .web import Certificate, NginxSite, Renewal, Units


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
    target = Target(ctx, project)
    check_options(ctx)
    if not target.options.get("git_url"):
        wanted = tuple(int(n) for n in target.project.python.split("."))
        if wanted > recipes.PYTHON_VERSION:
            raise ConfigError(
                f"The project requires Python {target.project.python}; the host recipes "
                f"install Python {'.'.join(map(str, recipes.PYTHON_VERSION))}.",
                "Deploy a Helios release that runs on Python 3.13.")
    result = [Connect(target), Preflight(target)]
    if target.options.get("ca_bundle"):
        result.append(TrustCA(target))
    if target.recipe.broker_files(target.broker):
        result.append(BrokerConfig(target))
    result.append(Packages(target))
    if target.options.get("git_url") or target.uses_uv:
        result.append(UvTool(target))
    result.append(RootTool(target))
    result += [
        ServiceUser(target), Postgres(target), Broker(target), EnvFile(target),
        Release(target), Migrate(target), Switch(target), Units(target),
        NginxSite(target, https=False), Certificate(target), NginxSite(target, https=True),
        Renewal(target), Liveness(target), BackupTimer(target), SealTimer(target),
    ]
    return result
