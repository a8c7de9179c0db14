"""aws_check's configuration area, its selection and exit-status rules, on the fixture."""

import json
import re

import pytest

from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import checks

SETTINGS = "--settings=helios_aws.settings_overrides.production"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_fixture_project(tmp_path_factory.mktemp("config"), "requirements")
    result = run_manage(project, "aws_configure", SETTINGS, "--domain", "vote.example.org",
                        "--email", "elections@example.org", "--auth-systems", "password",
                        "--broker", "rabbitmq", "--no-input")
    assert result.returncode == 0, result.stderr
    return project


def aws_check(project, *args, env_file=None):
    env = helios_env(HELIOS_ENV_FILE=str(env_file)) if env_file else helios_env()
    result = run_manage(project, "aws_check", SETTINGS, "--format", "json", *args, env=env)
    report = json.loads(result.stdout) if result.stdout else None
    return result.returncode, report, result.stderr


def empty_env(tmp_path):
    """A private .env with nothing in it: Helios's own defaults apply."""
    path = tmp_path / "empty.env"
    path.write_text("")
    path.chmod(0o600)
    return path


def by_id(report):
    return {c["id"]: c for c in report["checks"]}


def test_local_on_helios_defaults_fails_with_every_id(project, tmp_path):
    defaults = empty_env(tmp_path)
    status, report, stderr = aws_check(project, "--local", env_file=defaults)
    assert status == 1 and "helios_aws.E001" in stderr
    checks_by_id = by_id(report)
    ours = {c.id for c, _ in checks.MESSAGES}
    assert ours <= set(checks_by_id)  # every helios_aws check is listed, passed or not
    assert {i for i in ours if checks_by_id[i]["status"] != "pass"} == {
        "helios_aws.E001", "helios_aws.E002", "helios_aws.E003", "helios_aws.E005",
        "helios_aws.E006", "helios_aws.E007", "helios_aws.E008", "helios_aws.E009",
        "helios_aws.E012", "helios_aws.E013", "helios_aws.E014", "helios_aws.E017",
        "helios_aws.W001",
        "helios_aws.W002"}
    assert checks_by_id["helios_aws.E001"] == {
        "id": "helios_aws.E001", "area": "config", "level": "error", "status": "fail",
        "message": "DEBUG is on.", "hint": checks.E001.hint,
        "seconds": checks_by_id["helios_aws.E001"]["seconds"]}
    # W003 is always Helios's false positive; W004 is a true one while HSTS is off.
    assert checks_by_id["security.W003"]["status"] == "pass"
    assert "false positive" in checks_by_id["security.W003"]["message"]
    assert checks_by_id["security.W004"]["status"] == "warn"
    assert report["verdict"] == "fail"
    assert report["counts"]["fail"] == 12


def test_local_on_the_deployment_env_passes(project):
    status, report, stderr = aws_check(project, "--local",
                                       env_file=project / "deploy/.env")
    assert status == 0, stderr
    assert report["verdict"] == "pass"
    checks_by_id = by_id(report)
    assert "site.W001" in checks_by_id["security.W004"]["message"]
    assert checks_by_id["security.W004"]["status"] == "pass"
    assert {c["area"] for c in report["checks"]} == {"config"}


def test_fail_level_warning_passes_when_the_project_silences_its_own_warnings(project):
    # The fixture's URLconf raises urls.W002, which its settings silence as Helios does:
    # the documented CI recipe must pass on a clean deployment.
    status, report, stderr = aws_check(project, "--local", "--fail-level", "warning",
                                       env_file=project / "deploy/.env")
    assert status == 0, stderr
    assert report["verdict"] == "pass"
    assert by_id(report)["urls.W002"]["status"] == "skip"
    assert by_id(report)["urls.W002"]["message"] == (
        "1 message(s) silenced by SILENCED_SYSTEM_CHECKS.")


def test_full_run_checks_the_deployments_env_not_its_own(project):
    # This process runs on Helios's defaults (DEBUG on...): the config area must still
    # report the deployment's .env, read by a child started with it.
    status, report, stderr = aws_check(project, "--only", "config")
    assert status == 0, stderr
    assert by_id(report)["helios_aws.E001"]["status"] == "pass"
    assert by_id(report)["helios_aws.E010"]["status"] == "pass"


def test_fail_level_warning_counts_warnings(project, tmp_path):
    env_file = tmp_path / "no-hsts.env"
    env_file.write_text(re.sub(r"^HSTS=1$", "HSTS=0", (project / "deploy/.env").read_text(),
                               flags=re.M))
    env_file.chmod(0o600)
    status, report, _ = aws_check(project, "--local", env_file=env_file)
    assert status == 0 and report["verdict"] == "warn"
    assert by_id(report)["helios_aws.W001"]["status"] == "warn"
    status, _, stderr = aws_check(project, "--local", "--fail-level", "warning",
                                  env_file=env_file)
    assert status == 1
    assert "helios_aws.W001" in stderr and "security.W004" in stderr


def test_only_and_skip_select_by_area_and_id(project, tmp_path):
    defaults = empty_env(tmp_path)
    status, report, _ = aws_check(project, "--local", "--only", "helios_aws.E001,security.W003",
                                  env_file=defaults)
    assert [c["id"] for c in report["checks"]] == ["helios_aws.E001", "security.W003"]
    assert status == 1
    status, report, _ = aws_check(project, "--local", "--skip", "config", env_file=defaults)
    assert report["checks"] == [] and status == 0 and report["verdict"] == "pass"


def test_unknown_selection_and_missing_deployment_are_refused(project, tmp_path):
    status, report, stderr = aws_check(project, "--only", "sites")
    assert status == 1 and report is None
    assert "'sites' is not an area or a check id" in stderr
    status, report, stderr = aws_check(project, "--skip", "site.E099")
    assert status == 1 and "'site.E099' is not an area or a check id" in stderr
    status, report, stderr = aws_check(project, "--output", str(tmp_path / "nowhere"))
    assert status == 1 and report is None
    assert "No deployment is recorded" in stderr
