"""The deployment's login systems: which the project offers, which are enabled, and the
credentials each one needs.

Helios enables the systems named in ``AUTH_ENABLED_SYSTEMS``. A system is a module that
the project's ``helios_auth/auth_systems`` package registers under its name
(``AUTH_SYSTEMS['ldap'] = ldapauth``); a name with nothing registered still gets a login
button, which answers 500. Helios's own default (``ldap,password,google,facebook``)
enables systems without their credentials and an LDAP login wired to a public test
directory, so it is never carried over: the operator names the systems, or gets
``password`` plus each external system whose credentials were given. Every system is
enabled only with all of its credentials; every problem is reported at once.
"""

import ast
import dataclasses
import pkgutil
import re
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

PACKAGE = Path("helios_auth") / "auth_systems"
REGISTRY = "AUTH_SYSTEMS"
DEFAULT_SYSTEM = "password"
# Helios's hard-coded LDAP server: a public test directory whose accounts are published.
DEMO_LDAP_HOSTS = frozenset({"ldap.forumsys.com"})


@dataclasses.dataclass(frozen=True)
class Secret:
    """A credential kept only in the .env: given by flag or, better, by variable."""

    option: str  # aws_configure's option, e.g. "github_client_secret"
    env: str  # the .env key the server reads, e.g. "GH_CLIENT_SECRET"
    label: str

    @property
    def flag(self):
        return "--" + self.option.replace("_", "-")

    @property
    def variable(self):
        return "HELIOS_" + self.option.upper()


@dataclasses.dataclass(frozen=True)
class LoginSystem:
    name: str
    ids: tuple = ()  # (deployment field, .env key): required, recorded in deployment.json
    secrets: tuple = ()  # Secret
    options: tuple = ()  # (deployment field, .env key): optional, never "credentials given"


def _oauth(name, label, id_field, id_key, secret_option, secret_key):
    return LoginSystem(name, ids=((id_field, id_key),),
                       secrets=(Secret(secret_option, secret_key, label),))


# The systems helios-aws can configure, in the order a default list enables them. The .env
# keys are the ones Helios's settings read (GitHub's are GH_*), except LDAP's, which the
# settings overlay reads (Helios hard-codes its own).
SYSTEMS = {system.name: system for system in (
    LoginSystem(DEFAULT_SYSTEM),
    _oauth("google", "Google OAuth client secret", "google_client_id", "GOOGLE_CLIENT_ID",
           "google_client_secret", "GOOGLE_CLIENT_SECRET"),
    _oauth("facebook", "Facebook app secret", "facebook_app_id", "FACEBOOK_APP_ID",
           "facebook_api_secret", "FACEBOOK_API_SECRET"),
    _oauth("github", "GitHub OAuth client secret", "github_client_id", "GH_CLIENT_ID",
           "github_client_secret", "GH_CLIENT_SECRET"),
    _oauth("gitlab", "GitLab OAuth client secret", "gitlab_client_id", "GITLAB_CLIENT_ID",
           "gitlab_client_secret", "GITLAB_CLIENT_SECRET"),
    _oauth("linkedin", "LinkedIn OAuth client secret", "linkedin_client_id", "LINKEDIN_CLIENT_ID",
           "linkedin_client_secret", "LINKEDIN_CLIENT_SECRET"),
    LoginSystem(
        "ldap",
        ids=(("ldap_uri", "AUTH_LDAP_SERVER_URI"), ("ldap_bind_dn", "AUTH_LDAP_BIND_DN"),
             ("ldap_user_search_base", "AUTH_LDAP_USER_SEARCH_BASE")),
        secrets=(Secret("ldap_bind_password", "AUTH_LDAP_BIND_PASSWORD",
                        "LDAP bind password"),),
        options=(("ldap_user_filter", "AUTH_LDAP_USER_FILTER"),
                 ("ldap_start_tls", "AUTH_LDAP_START_TLS")),
    ),
)}
# Systems Helios may offer that a deployment never enables, and why.
REFUSED = {
    "devlogin": "it lets anyone log in as anyone (Helios offers it for development)",
    "cas": "Helios's cas login sends users to the CAS server fixed in its code, not to "
           "one the deployment chooses",
    "yahoo": "it signs in through Yahoo's OpenID 2.0 service, which Yahoo has shut down",
}

SECRETS = tuple(s for system in SYSTEMS.values() for s in system.secrets)
SECRET_KEYS = frozenset(s.env for s in SECRETS)
PUBLIC_KEYS = tuple(key for system in SYSTEMS.values()
                    for _, key in system.ids + system.options)


def project_systems(root):
    """The login system names the project's ``helios_auth/auth_systems`` package offers:
    the string keys it registers in ``AUTH_SYSTEMS`` (read, not imported), else its module
    names. ``None`` when the project has no such package."""
    package = Path(root) / PACKAGE
    init = package / "__init__.py"
    if not init.is_file():
        return None
    try:
        tree = ast.parse(init.read_text(), str(init))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{init} cannot be read ({exc}).",
                          "Fix the file: it lists the project's login systems.")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(_registered(target, node.value))
    if names:
        return frozenset(names)
    return frozenset(module.name for module in pkgutil.iter_modules([str(package)])
                     if not module.name.startswith("_"))


def _registered(target, value):
    """Names an assignment puts in the registry: ``AUTH_SYSTEMS['x'] = ...`` or
    ``AUTH_SYSTEMS = {'x': ...}``."""
    if isinstance(target, ast.Subscript) and _is_registry(target.value):
        key = target.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return {key.value}
    if _is_registry(target) and isinstance(value, ast.Dict):
        return {k.value for k in value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return set()


def _is_registry(node):
    return isinstance(node, ast.Name) and node.id == REGISTRY


def _given(deployment, system, known_secrets):
    return any(getattr(deployment, field) for field, _ in system.ids) or \
        any(s.env in known_secrets for s in system.secrets)


def choose(deployment, offered, known_secrets):
    """The systems to enable: the operator's list, else ``password`` plus each system the
    project offers with any of its credentials given (so a half-given one is reported)."""
    if deployment.auth_list:
        return list(dict.fromkeys(deployment.auth_list))
    offered = offered or ()
    return [DEFAULT_SYSTEM] + [
        name for name, system in SYSTEMS.items()
        if name != DEFAULT_SYSTEM and name in offered
        and _given(deployment, system, known_secrets)
    ]


def problems(deployment, systems, offered, known_secrets):
    """Why ``systems`` cannot be enabled as configured: one sentence per problem."""
    found = []
    for name in systems:
        system = SYSTEMS.get(name)
        if name in REFUSED:
            found.append(f"{name} is refused: {REFUSED[name]}.")
        elif offered is None:
            found.append(f"{name!r} cannot be checked: the project has no {PACKAGE.as_posix()} "
                         "package of login systems.")
        elif name not in offered:
            found.append(f"{name!r} is not a login system of this project (it offers "
                         f"{', '.join(sorted(offered)) or 'none'}).")
        elif system is None:
            found.append(f"{name} is not supported: helios-aws does not know the "
                         "credentials it needs.")
        else:
            missing = [_flag(field) for field, _ in system.ids
                       if not getattr(deployment, field)]
            missing += [f"{s.variable} (or {s.flag})" for s in system.secrets
                        if s.env not in known_secrets]
            if missing:
                found.append(f"{name} needs {' and '.join(missing)}.")
    if "ldap" in systems and deployment.ldap_uri:
        found.extend(ldap_problems(deployment))
    return found


def is_demo_directory(uri):
    """Whether an LDAP URI points at Helios's public test directory."""
    try:
        host = (urlsplit(uri).hostname or "").lower().rstrip(".")
    except ValueError:
        return False
    return host in DEMO_LDAP_HOSTS


def ldap_problems(deployment):
    found = ldap_uri_problems(deployment.ldap_uri, deployment.ldap_start_tls)
    problem = ldap_filter_problem(deployment.ldap_user_filter)
    return found + ([problem] if problem else [])


# OpenLDAP (ldap_initialize, under python-ldap and django-auth-ldap) takes a list of
# servers separated by spaces or commas and binds to whichever answers: every one is
# judged, and helios-aws accepts only one.
LDAP_URI_SEPARATORS = re.compile(r"[\s,]+")
LDAP_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+"
                          r"|\[[0-9A-Fa-f:.]+\]")


def _ldap_address_ok(uri):
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return False
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") and \
        ":" in parts.netloc else parts.netloc
    return (parts.scheme in ("ldap", "ldaps") and bool(parts.hostname)
            and "@" not in parts.netloc and parts.path in ("", "/") and not parts.query
            and not parts.fragment and bool(LDAP_HOST_RE.fullmatch(host)))


def _shown(uri):
    """``uri`` without what could be a password (userinfo) in it."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def ldap_uri_problems(value, start_tls, name="--ldap-uri"):
    """What is wrong with the LDAP server address(es) ``value`` used with (or without)
    StartTLS: several servers, the test directory, passwords in the clear, not an address.
    One judgement for aws_configure's options and for the installed settings (E013)."""
    value = str(value or "")
    uris = [u for u in LDAP_URI_SEPARATORS.split(value.strip()) if u]
    if not uris:
        return [f"{name} is empty: there is no directory to log in against."]
    found = []
    if len(uris) > 1:
        found.append(f"{name} {value!r} names {len(uris)} servers (separated by spaces or "
                     "commas): the bind password would go to whichever answers. Give one.")
    for uri in uris:
        if is_demo_directory(uri):
            found.append(f"{name} {uri} is Helios's public test directory, whose "
                         "accounts are published: give your own directory.")
        elif not _ldap_address_ok(uri):
            found.append(f"{name} {_shown(uri)!r} is not an ldaps://HOST[:PORT] address.")
        elif uri.startswith("ldap:") and not start_tls:
            found.append(f"{name} {uri} would send passwords in the clear: use "
                         "ldaps:// or add --ldap-start-tls.")
        elif uri.startswith("ldaps:") and start_tls:
            found.append(f"--ldap-start-tls is for ldap:// addresses: {uri} is encrypted "
                         "already (drop one of the two).")
    return found


def ldap_filter_problem(text, name="--ldap-user-filter"):
    """Why ``text`` is not an LDAP search filter (RFC 4515) with ``%(user)s`` where the
    login name goes, as django-auth-ldap fills it in; None when it is one."""
    text = str(text or "")
    if "%(user)s" not in text:
        return (f"{name} {text!r} does not contain %(user)s, where the name typed at "
                "login goes.")
    try:
        filled = text % {"user": "alice"}
    except (KeyError, ValueError, TypeError):
        return (f"{name} {text!r} has a % that is not %(user)s (write a literal % as %%): "
                "every login would fail.")
    where = _filter_error(filled if filled.startswith("(") else f"({filled})")
    if where is not None:
        return (f"{name} {text!r} is not an LDAP filter ({where}): every login would fail. "
                "For example: (uid=%(user)s) or (&(objectClass=person)(uid=%(user)s)).")
    return None


_ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*")
_RULE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+")
_VALUE = re.compile(r"(?:[^\x00()*\\]|\\[0-9A-Fa-f]{2})*")


def _filter_error(text):
    """None if ``text`` is one RFC 4515 filter, else what is wrong and where."""
    position = _filter(text, 0)
    if isinstance(position, str):
        return position
    return None if position == len(text) else f"unexpected {text[position:][:10]!r}"


def _at(text, i):
    return repr(text[i:][:10]) if text[i:] else "the end"


def _filter(text, i):
    """Parse the ``(...)`` at ``i``: the position after it, or an error string."""
    if text[i:i + 1] != "(":
        return f"'(' expected at {_at(text, i)}"
    i += 1
    kind = text[i:i + 1]
    if kind in ("&", "|", "!"):
        i += 1
        count = 0
        while text[i:i + 1] == "(":
            i = _filter(text, i)
            if isinstance(i, str):
                return i
            count += 1
        if count == 0 or (kind == "!" and count != 1):
            return f"{kind} needs {'one filter' if kind == '!' else 'filters'}"
    else:
        i = _item(text, i)
        if isinstance(i, str):
            return i
    if text[i:i + 1] != ")":
        return f"')' expected at {_at(text, i)}"
    return i + 1


def _item(text, i):
    attribute = _ATTRIBUTE.match(text, i)
    end = attribute.end() if attribute else i
    if text.startswith(":", end):  # an extensible match: attr[:dn][:rule]:=value
        if text.startswith(":dn", end) and not text.startswith(":dn=", end):
            end += 3
        if text.startswith(":", end) and not text.startswith(":=", end):
            rule = _RULE.match(text, end + 1)
            if not rule:
                return f"a matching rule expected at {_at(text, end + 1)}"
            end = rule.end()
        if not text.startswith(":=", end) or (not attribute and ":" not in text[i + 1:end]):
            return f"':=' expected at {_at(text, end)}"
        return _VALUE.match(text, end + 2).end()
    if not attribute:
        return f"an attribute expected at {_at(text, i)}"
    for operator in ("~=", ">=", "<="):
        if text.startswith(operator, end):
            return _VALUE.match(text, end + 2).end()
    if not text.startswith("=", end):
        return f"'=' expected at {_at(text, end)}"
    position = end + 1
    while True:  # a value, or a presence/substring pattern: values separated by '*'
        position = _VALUE.match(text, position).end()
        if text[position:position + 1] != "*":
            return position
        position += 1


def _flag(field):
    return "--" + field.replace("_", "-")


def require(deployment, offered, known_secrets):
    """The systems to enable, or one ConfigError listing every problem."""
    systems = choose(deployment, offered, known_secrets)
    found = problems(deployment, systems, offered, known_secrets)
    if found:
        raise ConfigError(
            "The login systems cannot be enabled as configured:\n"
            + "\n".join(f"  - {problem}" for problem in found),
            "Give each system's credentials (`aws_configure --help` lists the flags; "
            "secrets go in the HELIOS_* variables named above), or leave the system out "
            "of --auth-systems (the list given last is kept in deployment.json).",
        )
    return systems


def missing_secrets(deployment, offered, known_secrets):
    """The secrets of the systems to enable that are not known yet (to ask for them)."""
    systems = choose(deployment, offered, known_secrets)
    return [s for name in systems if name in SYSTEMS for s in SYSTEMS[name].secrets
            if s.env not in known_secrets]


def secret_keys(systems):
    """The .env keys of the secrets of ``systems``."""
    return {s.env for name in systems if name in SYSTEMS for s in SYSTEMS[name].secrets}


def env_values(deployment, systems):
    """The .env values of the enabled systems' public settings."""
    values = {}
    for name in systems:
        system = SYSTEMS.get(name)
        for field, key in (system.ids + system.options) if system else ():
            value = getattr(deployment, field)
            if isinstance(value, bool):
                values[key] = "1" if value else "0"
            elif value:
                values[key] = value
    return values
