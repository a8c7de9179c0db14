"""Every record one part writes and another reads back is checked on read against its
schema: what the writer writes is accepted, anything of another shape or type is refused
with one line naming the file and the field (property-based, with hypothesis)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helios_aws import backup, params, records
from helios_aws.engine import State
from helios_aws.errors import ConfigError

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=8))
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)
KEYS = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=8)


def valid(spec):
    """A strategy for values that fit ``spec``."""
    if isinstance(spec, records.Optional):
        return st.one_of(st.none(), valid(spec.spec))
    if isinstance(spec, dict):
        spec = records.Object(spec)
    if isinstance(spec, records.Object):
        required = {k: valid(v) for k, v in spec.fields.items()
                    if not isinstance(v, records.Optional)}
        optional = {k: valid(v) for k, v in spec.fields.items()
                    if isinstance(v, records.Optional)}
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(spec, records.MapOf):
        return st.dictionaries(KEYS, valid(spec.spec), max_size=3)
    if isinstance(spec, records.ListOf):
        return st.lists(valid(spec.spec), max_size=3)
    return {str: st.text(max_size=12), int: st.integers(), bool: st.booleans(),
            float: st.one_of(st.integers(), st.floats(allow_nan=False)),
            object: ANY_JSON}[spec]


def wrong_for(spec):
    """A JSON value of a type ``spec`` never takes."""
    if isinstance(spec, records.Optional):
        spec = spec.spec
    if isinstance(spec, (dict, records.Object, records.MapOf)):
        return st.one_of(st.lists(JSON_SCALARS, max_size=2), st.text(), st.integers(),
                         st.booleans())
    if isinstance(spec, records.ListOf):
        return st.one_of(st.text(), st.integers(), st.dictionaries(KEYS, st.text(), max_size=1))
    return {str: st.one_of(st.integers(), st.booleans(), st.lists(st.text(), max_size=1)),
            int: st.one_of(st.booleans(), st.text(), st.floats(allow_nan=False)),
            bool: st.one_of(st.integers(), st.text(), st.none().map(lambda _: [])),
            float: st.one_of(st.booleans(), st.text(), st.lists(st.integers(), max_size=1))}[spec]


def typed_fields(spec):
    spec = records.Object(spec) if isinstance(spec, dict) else spec
    return {k: v for k, v in spec.fields.items()
            if (v.spec if isinstance(v, records.Optional) else v) is not object}


SCHEMAS = {"manifest": records.MANIFEST, "drill": records.DRILL,
           "backup.json": records.BACKUP_CONFIG, "state.json": records.STATE,
           "deployment.json": params.record_schema(), "audit": records.AUDIT}


@pytest.mark.parametrize("name", SCHEMAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_record_of_the_schema_is_accepted_and_a_wrong_type_named(name, data):
    spec = SCHEMAS[name]
    record = data.draw(valid(spec))
    assert records.check(json.loads(json.dumps(record)), spec, name, "fix", ConfigError) == record

    field = data.draw(st.sampled_from(sorted(typed_fields(spec))))
    record[field] = data.draw(wrong_for(typed_fields(spec)[field]))
    with pytest.raises(ConfigError) as refused:
        records.check(record, spec, name, "the fix", ConfigError)
    assert str(refused.value.message).startswith(f"{name}: {field}")
    assert "\n" not in refused.value.message and refused.value.hint == "the fix"


@pytest.mark.parametrize("name", ["manifest", "drill", "backup.json", "state.json",
                                  "deployment.json", "audit"])
@settings(max_examples=30, deadline=None)
@given(value=st.one_of(st.lists(JSON_SCALARS, max_size=3), JSON_SCALARS))
def test_a_record_that_is_not_an_object_is_refused(name, value):
    with pytest.raises(ConfigError, match=f"^{name}: the record must be an object"):
        records.check(value, SCHEMAS[name], name, "fix", ConfigError)


# ------------------------------------------------------------ the real writers and readers

CIDRS = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)) + "/32")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(volume=st.integers(8, 1000), cidr=CIDRS, days=st.integers(1, 3650),
       tls=st.booleans(), wrong=st.sampled_from([True, 1, ["x"], {"a": 1}, 1.5]),
       field=st.sampled_from(["ssh_cidr", "volume_size", "domain", "backup_days",
                              "ldap_start_tls", "https_port"]))
def test_deployment_json_reads_back_what_aws_configure_records(tmp_path, volume, cidr, days,
                                                                tls, wrong, field):
    deployment = params.build([{"domain": "vote.example.org", "email": "e@example.org",
                                "volume_size": volume, "ssh_cidr": cidr, "backup_days": days,
                                "ldap_start_tls": tls}])
    params.write_record(tmp_path, deployment)
    assert params.load(tmp_path) == deployment

    path = tmp_path / params.RECORD_NAME
    record = json.loads(path.read_text())
    if type(wrong) is type(record[field]):
        return
    record[field] = wrong
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError) as refused:
        params.load(tmp_path)
    assert refused.value.message.startswith(f"{path}: {field} must be ")
    assert "aws_configure" in refused.value.hint


def test_ssh_cidr_true_is_never_an_address(tmp_path):
    deployment = params.build([{"domain": "vote.example.org", "email": "e@example.org"}])
    params.write_record(tmp_path, deployment)
    path = tmp_path / params.RECORD_NAME
    path.write_text(path.read_text().replace('"ssh_cidr": ""', '"ssh_cidr": true'))

    with pytest.raises(ConfigError) as refused:
        params.load(tmp_path)

    assert refused.value.message == f"{path}: ssh_cidr must be a string, not true."


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=valid(records.STATE), wrong=st.one_of(st.lists(st.integers(), max_size=2),
                                                  st.text(), st.integers()))
def test_state_json_reads_back_what_a_run_saves(tmp_path, data, wrong):
    path = tmp_path / "state.json"
    path.unlink(missing_ok=True)
    state = State(path)
    for key, value in data.items():
        state.set(key, value)
    state.save()
    assert State(path).data == {k: v for k, v in data.items() if v is not None}

    path.write_text(json.dumps(wrong))
    with pytest.raises(ConfigError, match=f"^{path}: the record must be an object"):
        State(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        State(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=valid(records.BACKUP_CONFIG))
def test_backup_json_reads_back_what_the_host_half_writes(tmp_path, config):
    written = backup.Config(bucket=config["bucket"], prefix=config["prefix"],
                            region=config["region"], service_user=config.get("service_user") or "",
                            units=tuple(config.get("units") or ()),
                            time_zone=config.get("time_zone") or "")
    path = tmp_path / "backup.json"
    path.write_text(written.as_json())
    assert backup.Config.load(path) == written

    path.write_text(json.dumps(dict(json.loads(written.as_json()), units="gunicorn.service")))
    with pytest.raises(backup.BackupError) as refused:
        backup.Config.load(path)
    assert refused.value.message == (f"{path}: units must be a list, not a string "
                                     "'gunicorn.service'.")
