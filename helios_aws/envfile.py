"""The deployment's ``.env``: one format that every reader reads alike.

Three readers read the file: systemd (``EnvironmentFile=``), django-environ (the settings
overlay, ``read_env``) and :func:`parse`. They split lines differently (systemd at ``\\n``
and ``\\r`` only, django-environ at everything :meth:`str.splitlines` breaks on) and treat
quotes, backslashes and surrounding blanks differently. So:

- the writer (:func:`quote`) refuses control characters and every line-breaking character
  outright, and writes the rest bare when it holds only characters no reader treats
  specially, in single quotes when that is read literally by all, or else in double quotes
  with only ``\\"`` and ``\\\\`` escaped (the escapes both readers undo alike);
- the parser reads lines as systemd does and refuses, naming the line, any line the
  readers would not read the same way (leading blanks, ``export``, a backslash outside
  quotes, an escape the readers undo differently, text after a closing quote, a comment
  that a trailing backslash continues...). Neither reader expands ``$`` in this file.

Re-running merges: keys the user added, comments and order are kept; a managed key is
added when missing and updated only where its current value is the one this tool wrote
last (recorded as a hash in the manifest), so hand edits survive. Secrets are generated
once and never regenerated.
"""

import hashlib
import re
import secrets
import string
import unicodedata

from .errors import ConfigError
from .files import read_text

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LINE_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
BARE_RE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
# Where str.splitlines() (django-environ) breaks a line besides "\n".
LINE_BREAKS = "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
# Escapes inside double quotes that systemd and django-environ both undo to the character.
DOUBLE_QUOTE_ESCAPES = "\"\\`$"
# ...and those both keep as written (backslash included).
DOUBLE_QUOTE_KEPT = "nrt"
BLANKS = " \t"
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


def unreadable_character(text, allowed=""):
    """The first character of ``text`` that no reader of a .env takes the same way: a
    control character, a line break, or half of a surrogate pair; ``None`` if there is
    none."""
    for char in text:
        if char in allowed:
            continue
        if char in LINE_BREAKS or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            return char
    return None


def check_value(name, value):
    """Refuse a value that cannot be written to the .env so that every reader agrees."""
    char = unreadable_character(value)
    if char is not None:
        raise ConfigError(
            f"{name} contains a control character or line break (U+{ord(char):04X}).",
            "systemd and django-environ would read the .env differently (one could see "
            "another setting in it); remove that character.",
        )


def quote(key, value):
    """``value`` as it is written after ``KEY=``, read back alike by every reader."""
    check_value(f"The value of {key}", value)
    if BARE_RE.fullmatch(value):
        return value
    if "'" not in value and not _double_quoted(value):
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _double_quoted(text):
    # django-environ strips a second pair of double quotes inside single quotes.
    return len(text) >= 2 and text[0] == text[-1] == '"'


def parse(text, name=".env"):
    """The key/value pairs of an env file (the last one wins, as in every reader).

    Raises ConfigError naming the line when a line would not be read the same way by
    systemd and django-environ.
    """
    values = {}
    for number, line in enumerate((text or "").split("\n"), 1):
        try:
            pair = _parse_line(line[:-1] if line.endswith("\r") else line)
        except ValueError as exc:
            raise ConfigError(
                f"{name}, line {number}: {exc}",
                f"Edit line {number} so that systemd and django-environ read it alike: "
                "KEY=value with no blanks around '=', a value in single quotes when it "
                "holds blanks, quotes or backslashes (or in double quotes with \\\" and "
                "\\\\ escaped when it holds a single quote).",
            ) from None
        if pair:
            values[pair[0]] = pair[1]
    return values


def read(path):
    """The values of the env file at ``path`` (empty when there is none)."""
    return parse(read_text(path), str(path))


def _parse_line(line):
    """(key, value), or None for a blank or comment line; ValueError for a line the
    readers would take differently."""
    stripped = line.strip(BLANKS)
    comment = stripped[:1] in ("#", ";")
    char = unreadable_character(line, allowed=BLANKS if comment else "")
    if char is not None:
        raise ValueError(f"it holds a control character or line break (U+{ord(char):04X}).")
    if not stripped:
        return None
    if comment:
        if stripped.endswith("\\"):
            # systemd (before v254) continues such a comment on the next line.
            raise ValueError("a comment ends with a backslash.")
        return None
    match = LINE_RE.fullmatch(line)
    if not match:
        raise ValueError("it is not KEY=value (no 'export', no blanks before the key or "
                         "around '=').")
    return match.group(1), _parse_value(match.group(2))


def _parse_value(raw):
    if raw[:1] == "'":
        if len(raw) < 2 or not raw.endswith("'") or "'" in raw[1:-1]:
            raise ValueError("a single-quoted value must be one quoted text ending the line.")
        inner = raw[1:-1]
        if _double_quoted(inner):
            raise ValueError("a single-quoted value is itself in double quotes.")
        return inner
    if raw[:1] == '"':
        if len(raw) < 2 or not raw.endswith('"'):
            raise ValueError("a double-quoted value must end the line with its quote.")
        return _unescape(raw[1:-1])
    if "\\" in raw:
        raise ValueError("a backslash outside quotes.")
    if raw != raw.strip(BLANKS):
        raise ValueError("blanks around a value outside quotes.")
    return raw


def _unescape(inner):
    out, chars = [], iter(inner)
    for char in chars:
        if char == '"':
            raise ValueError("a double quote inside double quotes is not escaped.")
        if char != "\\":
            out.append(char)
            continue
        escaped = next(chars, None)
        if escaped is None:
            raise ValueError("the closing double quote is escaped.")
        if escaped in DOUBLE_QUOTE_ESCAPES:
            out.append(escaped)
        elif escaped in DOUBLE_QUOTE_KEPT:
            out.append("\\" + escaped)
        else:
            raise ValueError(f"the escape \\{escaped} inside double quotes.")
    return "".join(out)


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


def merge(existing, desired, written_hashes, forced=(), name=".env"):
    """Merge ``desired`` (key -> value) into the ``existing`` text.

    ``written_hashes`` maps keys to the hash of the value this tool wrote last; a key whose
    current value has another hash was edited by hand and is kept. Keys in ``forced`` were
    given explicitly this run and replace whatever is there. Generated secrets are added
    only when missing.
    """
    current = parse(existing, name)
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
        match = LINE_RE.fullmatch(line)
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
