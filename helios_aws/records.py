"""The schemas of the records helios-aws writes and reads back, and the one check that
reads them.

A record written by one part and read by another (the deployment record, the state file,
the host's backup configuration, a backup's manifest, a drill record) is checked on read
against its schema, types included, before anything uses it: a damaged or hand-edited
record ends in one line naming the file, the field and the fix, never in a traceback or
in a value read as something else (``ssh_cidr: true`` is not an address).

A schema is made of: a Python type (``str``, ``int``, ``bool``, ``float``: a JSON number),
:class:`Optional` (the key may be missing or null), :class:`ListOf`, :class:`MapOf` (an
object with any keys) and a dict (an object with those keys; others are refused when
``closed``).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Optional:
    spec: object


@dataclasses.dataclass(frozen=True)
class ListOf:
    spec: object


@dataclasses.dataclass(frozen=True)
class MapOf:
    spec: object


@dataclasses.dataclass(frozen=True)
class Object:
    fields: dict
    closed: bool = True


JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
              int: "an integer", float: "a number", type(None): "null"}


def _describe(spec):
    if isinstance(spec, Optional):
        return _describe(spec.spec) + " or null"
    if isinstance(spec, ListOf):
        return "a list"
    if isinstance(spec, (MapOf, Object, dict)):
        return "an object"
    return JSON_NAMES.get(spec, str(spec))


def _found(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return JSON_NAMES[type(value)]
    return f"{JSON_NAMES.get(type(value), type(value).__name__)} {value!r}"[:80]


def problem(value, spec, field=""):
    """The first way ``value`` does not fit ``spec``: (field, what is wrong), or None."""
    if isinstance(spec, Optional):
        return None if value is None else problem(value, spec.spec, field)
    if isinstance(spec, dict):
        spec = Object(spec)
    name = field or "the record"
    if isinstance(spec, Object):
        if not isinstance(value, dict):
            return name, f"must be an object, not {_found(value)}"
        for key, inner in spec.fields.items():
            if key not in value and not isinstance(inner, Optional):
                return f"{field}.{key}".lstrip("."), "is missing"
            found = problem(value.get(key), inner, f"{field}.{key}".lstrip("."))
            if found:
                return found
        if spec.closed:
            unknown = sorted(set(value) - set(spec.fields))
            if unknown:
                return f"{field}.{unknown[0]}".lstrip("."), "is not a field of this record"
        return None
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return name, f"must be an object, not {_found(value)}"
        for key, item in value.items():
            found = problem(item, spec.spec, f"{field}.{key}".lstrip("."))
            if found:
                return found
        return None
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return name, f"must be a list, not {_found(value)}"
        for index, item in enumerate(value):
            found = problem(item, spec.spec, f"{field}[{index}]")
            if found:
                return found
        return None
    if spec is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec)
    return None if ok else (name, f"must be {_describe(spec)}, not {_found(value)}")


def check(value, spec, where, fix, error):
    """``value`` if it fits ``spec``; else ``error(message, fix)`` naming ``where`` (the
    file) and the field."""
    found = problem(value, spec)
    if found:
        field, wrong = found
        raise error(f"{where}: {field} {wrong}.", fix)
    return value


# ---------------------------------------------------------------------------- schemas

# state.json: one object per step that records something; the keys other parts read are
# typed (the host key's fingerprints by key type, the Elastic IP, the bucket).
STATE = Object({
    "account": Optional(Object({"id": str, "region": str}, closed=False)),
    "image": Optional(Object({"id": str}, closed=False)),
    "elastic_ip": Optional(Object({"public_ip": Optional(str)}, closed=False)),
    "host_key": Optional(Object({"fingerprints": Optional(MapOf(str))}, closed=False)),
    "backups": Optional(Object({"bucket": Optional(str)}, closed=False)),
    "key_pair": Optional(MapOf(Optional(object))),
    "instance": Optional(MapOf(Optional(object))),
    "security_group": Optional(MapOf(Optional(object))),
    "iam": Optional(MapOf(Optional(object))),
    "ses": Optional(MapOf(Optional(object))),
    "dns": Optional(MapOf(Optional(object))),
}, closed=False)

# The host's backup configuration (backup.Config).
BACKUP_CONFIG = Object({"bucket": str, "prefix": str, "region": str,
                        "service_user": Optional(str), "units": Optional(ListOf(str)),
                        "time_zone": Optional(str)})

_PART = {"key": str, "size": int, "sha256": str, "version_id": Optional(str)}
MANIFEST = Object({
    "version": int, "deployment": str, "kind": str, "folder": str, "created_at": str,
    "release": str, "migrations": str,
    "database": Object(dict(_PART, name=str)),
    "media": Object(dict(_PART, files=int)),
    "row_counts": MapOf(int),
})

DRILL = Object({
    "backup": str, "started_at": str, "passed": bool, "finished_at": str,
    "seconds": float, "created_at": Optional(str), "rows": Optional(int),
    "tables": Optional(int), "error": Optional(str),
})


def deployment_schema(fields):
    """deployment.json: every parameter of ``fields`` ({name: default}) with its default's
    type; all optional (a record holds what was given)."""
    return Object({name: Optional(float if isinstance(default, float) else type(default))
                   for name, default in fields.items()})

# An override of the election freeze (helios_aws.freeze writes it, freezeside checks it
# and appends it to the host's audit log and the bucket).
AUDIT = Object({
    "at": str, "action": str, "reason": str,
    "operator": Object({"user": str, "aws": Optional(str)}),
    "elections": ListOf(Object({"short_name": str, "closes_at": Optional(str)})),
    "changes": ListOf(str),
    "sha256_of_previous": Optional(str),
})
