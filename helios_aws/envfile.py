"""The deployment's ``.env``: one format that django-environ and systemd read alike.

Lines are ``KEY=value``. A value is written bare when it holds only characters neither
reader treats specially, and in single quotes otherwise; both readers take single-quoted
text literally. Values with a quote, a backslash or a line break are refused, because the
two readers would not agree on them.

Re-running merges: keys the user added, comments and order are kept; a managed key is
added when missing and updated only where its current value is the one this tool wrote
last (recorded as a hash in the manifest), so hand edits survive. Secrets are generated
once and never regenerated.
"""

import hashlib
import re
import secrets
import string

from .errors import ConfigError

LINE_RE = re.compile(r"\A(?:export )?([A-Za-z_][A-Za-z_0-9]*)=(.*)\Z")
BARE_RE = re.compile(r"\A[A-Za-z0-9_@%+=:,./-]*\Z")
SECRET_ALPHABET = string.ascii_letters + string.digits + "-_"

# Keys whose values are secret: never shown, never hashed into the manifest.
SECRET_KEYS = frozenset({
    "SECRET_KEY", "EMAIL_OPTOUT_SECRET", "GOOGLE_CLIENT_SECRET", "DATABASE_URL",
    "AWS_SES_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "ROLLBAR_ACCESS_TOKEN",
    # The login systems' secrets (logins.SECRETS), and CAS's, which Helios also reads.
    "FACEBOOK_API_SECRET", "GH_CLIENT_SECRET", "GITLAB_CLIENT_SECRET",
    "LINKEDIN_CLIENT_SECRET", "AUTH_LDAP_BIND_PASSWORD", "CAS_PASSWORD",
})
GENERATED_SECRETS = ("SECRET_KEY", "EMAIL_OPTOUT_SECRET")


def generate_secret(length=64):
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(length))


def fingerprint(value):
    return hashlib.sha256(value.encode()).hexdigest()


def quote(key, value):
    if "\n" in value or "\r" in value or "'" in value or "\\" in value:
        raise ConfigError(
            f"The value of {key} contains a quote, backslash or line break.",
            "systemd and django-environ would read it differently; choose another value.",
        )
    return value if BARE_RE.match(value) else f"'{value}'"


def unquote(raw):
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def parse(text):
    """The key/value pairs of an env file (the last one wins, as in both readers)."""
    values = {}
    for line in (text or "").splitlines():
        match = LINE_RE.match(line.strip())
        if match:
            values[match.group(1)] = unquote(match.group(2).strip())
    return values


class Merge:
    """The result of merging desired values into an existing env file."""

    def __init__(self, text, added, changed, kept):
        self.text = text
        self.added = added
        self.changed = changed
        self.kept = kept

    @property
    def has_changes(self):
        return bool(self.added or self.changed)


def merge(existing, desired, written_hashes, forced=()):
    """Merge ``desired`` (key -> value) into the ``existing`` text.

    ``written_hashes`` maps keys to the hash of the value this tool wrote last; a key whose
    current value has another hash was edited by hand and is kept. Keys in ``forced`` were
    given explicitly this run and replace whatever is there. Generated secrets are added
    only when missing.
    """
    current = parse(existing)
    added, changed, kept = [], [], []
    updates = {}
    for key, value in desired.items():
        if key not in current:
            updates[key] = value
            added.append(key)
            continue
        if current[key] == value or key in GENERATED_SECRETS:
            continue
        ours = written_hashes.get(key) == fingerprint(current[key])
        if key in forced or ours:
            updates[key] = value
            changed.append(key)
        else:
            kept.append(key)
    for key in GENERATED_SECRETS:
        if key not in current and key not in updates:
            updates[key] = generate_secret()
            added.append(key)

    lines = (existing or "").splitlines()
    out = []
    seen = set()
    for line in lines:
        match = LINE_RE.match(line.strip())
        key = match.group(1) if match else None
        if key in updates and key not in seen:
            out.append(f"{key}={quote(key, updates[key])}")
            seen.add(key)
        elif key in updates:
            continue
        else:
            out.append(line)
    for key, value in updates.items():
        if key not in seen:
            out.append(f"{key}={quote(key, value)}")
    text = "\n".join(out) + "\n"
    return Merge(text, added, changed, kept)


def hashes_for(text, keys):
    """Hashes of the non-secret managed values as written, for the manifest."""
    values = parse(text)
    return {k: fingerprint(values[k]) for k in keys if k in values and k not in SECRET_KEYS}
