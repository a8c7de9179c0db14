"""The rehearsal runs an operator's own checkout, from the package, without the tests.

``python -m helios_aws.rehearse --project PATH`` is what an operator runs from their
Helios (the VM variant is the same code with a VM as the host; the end-to-end VM test
covers that host half). Here it runs from a directory where no test module can be
imported, against a checkout with a change of its own.
"""

import re
import shutil
import subprocess
import sys

from fixtures import FIXTURE_DIR, helios_env


def rehearse(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "helios_aws.rehearse", "--work",
                           str(tmp_path / "work"), *args], cwd=tmp_path, env=helios_env(),
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def test_rehearses_the_operators_checkout_and_leaves_it_untouched(tmp_path):
    checkout = tmp_path / "my-helios"
    shutil.copytree(FIXTURE_DIR, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "server_ui/templates/local-change.txt").write_text("our own change\n")
    before = sorted(p.relative_to(checkout) for p in checkout.rglob("*"))

    result = rehearse(tmp_path, "--project", str(checkout))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    copy = tmp_path / "work/project"
    assert (copy / "server_ui/templates/local-change.txt").read_text() == "our own change\n"
    assert "no changes" in result.stdout.split("aws_provision again")[1]
    assert re.search(r"^(PASS|WARN): 0 failed", result.stdout, re.M), result.stdout[-3000:]
    assert f"Generated files:      {copy / 'deploy'}" in result.stdout
    # Nothing was written into the checkout: no deploy/, no lock, no byte code.
    assert sorted(p.relative_to(checkout) for p in checkout.rglob("*")) == before


def test_a_directory_that_is_not_a_django_project_is_refused(tmp_path):
    result = rehearse(tmp_path, "--project", str(tmp_path))
    assert result.returncode == 1
    assert "has no manage.py" in result.stderr and "Traceback" not in result.stderr
