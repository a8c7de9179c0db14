"""What the deployment needs to know about the Helios project, read from the project itself.

Nothing here hard-codes Helios's paths: the project root comes from the root settings
module, the WSGI callable from ``wsgi.py`` (or ``WSGI_APPLICATION``), the Celery app from
the module that builds one, the static aliases from the URLconf's ``serve`` patterns, the
dependency source from ``uv.lock`` or ``requirements.txt``, the Python version from
``requires-python`` or ``.python-version``, the login systems from the
``helios_auth/auth_systems`` package.
"""

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

from . import logins
from .errors import ConfigError

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11 is not supported anyway
    tomllib = None

DEFAULT_PYTHON = "3.13"
PLACEHOLDER_SENDERS = {"ben@adida.net", "webmaster@localhost", "root@localhost"}
CELERY_RE = re.compile(r"^\s*\w+\s*=\s*Celery\(", re.M)
# What the project names goes into nginx's site, the systemd units and root's commands:
# only plain names pass. URL and path segments may not start with a dot (no "." or "..").
_SEGMENT = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*"
ALIAS_URL_RE = re.compile(rf"/(?:{_SEGMENT}/)+", re.A)
ALIAS_PATH_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*", re.A)
DOTTED_RE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
WSGI_RE = re.compile(rf"{DOTTED_RE}:[A-Za-z_]\w*", re.A)
CELERY_APP_RE = re.compile(DOTTED_RE, re.A)
NOT_HELIOS_HINT = (
    "Run the command with the manage.py of a Helios checkout (the directory with "
    "settings.py, wsgi.py, a Celery app and uv.lock or requirements.txt)."
)


@dataclasses.dataclass(frozen=True)
class StaticAlias:
    url: str  # "/static/auth/"
    path: str  # directory relative to the project root, "helios_auth/media"

    def __post_init__(self):
        if self.url == "/":
            raise ConfigError(
                f"The URLconf serves static files ({self.path}) at the site's root, without "
                "a path prefix: nginx would get a second `location /`.",
                "Serve them under a prefix, e.g. static/ (re_path(r'^static/(?P<path>.*)$', "
                "serve, ...)).")
        if not ALIAS_URL_RE.fullmatch(self.url):
            raise ConfigError(
                f"The URLconf serves static files at {self.url!r}, which is not a plain URL "
                "prefix.", "Use a prefix of letters, digits, '-', '_', '.' and '~' between "
                "slashes, no '..', e.g. static/helios/.")
        if not ALIAS_PATH_RE.fullmatch(self.path):
            raise ConfigError(
                f"The URLconf serves static files from {self.path!r}, which is not a plain "
                "directory inside the project.", "Serve a directory below the project root "
                "whose path has letters, digits, '-', '_' and '.' only, no '..'.")


@dataclasses.dataclass(frozen=True)
class Project:
    root: Path
    wsgi: str  # "wsgi:application"
    celery_app: str  # "helios"
    static: tuple  # of StaticAlias, longest URL first
    dependency_source: str  # "uv" or "pip"
    python: str  # "3.13"
    default_from_email: str
    login_systems: frozenset | None  # what helios_auth/auth_systems offers (None: no package)

    def __post_init__(self):
        if not WSGI_RE.fullmatch(self.wsgi):
            raise ConfigError(f"The WSGI application {self.wsgi!r} is not a module:attribute "
                              "name.", "Name it like wsgi.application in WSGI_APPLICATION.")
        if not CELERY_APP_RE.fullmatch(self.celery_app):
            raise ConfigError(f"The Celery app {self.celery_app!r} is not a module name.",
                              "Create the Celery app in a package with a plain name.")

    @property
    def install_command(self):
        if self.dependency_source == "uv":
            return "uv sync --frozen --no-dev"
        return "pip install -r requirements.txt"


def find_root(explicit=None):
    """The project root: ``explicit``, else the directory of the root ``settings`` module."""
    if explicit:
        root = Path(explicit).resolve()
        if not root.is_dir():
            raise ConfigError(f"{explicit} is not a directory.", NOT_HELIOS_HINT)
        return root
    spec = importlib.util.find_spec("settings")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent
    return Path.cwd().resolve()


def _wsgi_callable(root):
    if (root / "wsgi.py").is_file():
        if re.search(r"^application\s*=", (root / "wsgi.py").read_text(), re.M):
            return "wsgi:application"
    from django.conf import settings

    dotted = getattr(settings, "WSGI_APPLICATION", None)
    if dotted:
        module, _, attr = dotted.rpartition(".")
        if (root / Path(*module.split("."))).with_suffix(".py").is_file():
            return f"{module}:{attr}"
    raise ConfigError(f"No WSGI application found in {root} (no wsgi.py defining "
                      "`application`, no WSGI_APPLICATION setting).", NOT_HELIOS_HINT)


def _celery_app(root):
    for candidate in sorted(root.glob("*/celery_app.py")) + sorted(root.glob("*/celery.py")):
        if CELERY_RE.search(candidate.read_text()):
            package = candidate.parent.name
            init = candidate.parent / "__init__.py"
            if init.is_file() and candidate.stem in init.read_text():
                return package
            return f"{package}.{candidate.stem}"
    raise ConfigError(f"No Celery app found in {root} (looked for */celery_app.py and "
                      "*/celery.py that create a Celery(...) app).", NOT_HELIOS_HINT)


def _pattern_prefix(pattern):
    """The literal URL prefix of a route or regex pattern, as "/static/auth/"."""
    text = str(pattern.pattern) if hasattr(pattern, "pattern") else str(pattern)
    text = text.lstrip("^")
    literal = re.split(r"[(\[<$.*+?\\]", text, maxsplit=1)[0]
    return literal


def static_aliases(urlconf=None, root=None):
    """(URL prefix, document root) for every ``django.views.static.serve`` pattern."""
    from django.urls import URLPattern, URLResolver, get_resolver
    from django.views.static import serve

    found = []

    def walk(patterns, prefix):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + _pattern_prefix(entry.pattern))
            elif isinstance(entry, URLPattern):
                callback = getattr(entry.callback, "__wrapped__", entry.callback)
                document_root = entry.default_args.get("document_root")
                if callback is serve and document_root:
                    found.append(("/" + prefix + _pattern_prefix(entry.pattern),
                                  Path(document_root)))

    walk(get_resolver(urlconf).url_patterns, "")
    aliases = []
    for url, document_root in found:
        if not url.endswith("/"):
            url = url.rsplit("/", 1)[0] + "/"
        try:
            rel = document_root.resolve().relative_to(root)
        except ValueError:
            raise ConfigError(
                f"Static files for {url} come from {document_root}, outside the project.",
                "Keep static files inside the project so they are deployed with it.",
            )
        aliases.append(StaticAlias(url=url, path=rel.as_posix()))
    aliases.sort(key=lambda a: (-len(a.url), a.url))
    return tuple(aliases)


def _python_version(root):
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and tomllib:
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject} is not valid TOML ({exc}).", "Fix the file.")
        spec = data.get("project", {}).get("requires-python", "")
        match = re.search(r">=?\s*(3\.\d+)", spec)
        if match:
            return match.group(1)
    version_file = root / ".python-version"
    if version_file.is_file():
        match = re.match(r"\s*(3\.\d+)", version_file.read_text())
        if match:
            return match.group(1)
    return DEFAULT_PYTHON


def _dependency_source(root):
    if (root / "uv.lock").is_file():
        return "uv"
    if (root / "requirements.txt").is_file():
        return "pip"
    raise ConfigError(f"{root} has neither uv.lock nor requirements.txt.",
                      "Helios lists its dependencies in uv.lock (or requirements.txt in "
                      "older checkouts); run the command in a Helios checkout.")


def inspect(explicit_root=None):
    """Read the project's deployment facts from the project and its loaded settings."""
    from django.conf import settings

    root = find_root(explicit_root)
    if not (root / "manage.py").is_file():
        raise ConfigError(f"{root} has no manage.py: it does not look like a Helios checkout.",
                          NOT_HELIOS_HINT)
    if explicit_root and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    sender = getattr(settings, "DEFAULT_FROM_EMAIL", "") or ""
    return Project(
        root=root,
        wsgi=_wsgi_callable(root),
        celery_app=_celery_app(root),
        static=static_aliases(root=root),
        dependency_source=_dependency_source(root),
        python=_python_version(root),
        default_from_email="" if sender in PLACEHOLDER_SENDERS else sender,
        login_systems=logins.project_systems(root),
    )
