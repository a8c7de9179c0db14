"""aws_check's runner: a probe that runs out of time has failed, with a hint about reaching
its target, and --timeout never cuts a probe below what it needs."""

import time

import pytest

from helios_aws.errors import HostTimeout
from helios_aws.probes import base


def sleeper(seconds):
    def probe(ctx):
        time.sleep(seconds)
        return base.passed(f"answered after {seconds} s")
    return probe


def host_probe(func, timeout=base.DEFAULT_TIMEOUT, needs=0.0):
    return base.Probe("host.E999", "a test probe", "the check's own remedy", func, timeout,
                      needs)


def run(probe, timeout=None):
    [result] = base.run([probe], base.Context(None), timeout=timeout)
    return result


def test_a_probe_past_its_deadline_fails_with_a_hint_to_reach_the_target():
    result = run(host_probe(sleeper(2), timeout=0.3))
    assert (result.status, result.message) == ("fail", "No answer within 0.3 s.")
    assert result.hint == base.TIMEOUT_HINTS["host"]


def test_a_command_that_timed_out_on_the_host_is_a_fail_not_a_skip():
    def probe(ctx):
        raise HostTimeout("`manage.py aws_host_checks` did not finish within 120 s on h.",
                          "run the command again")

    result = run(host_probe(probe))
    assert result.status == "fail"
    assert result.message.startswith("`manage.py aws_host_checks` did not finish")
    assert result.hint == base.TIMEOUT_HINTS["host"]


@pytest.mark.parametrize("timeout", [0.2, None])
def test_timeout_never_cuts_a_probe_below_what_it_needs(timeout):
    result = run(host_probe(sleeper(0.6), timeout=0.1, needs=1.5), timeout=timeout)
    assert (result.status, result.message) == ("pass", "answered after 0.6 s")


def test_the_django_side_probes_get_a_cold_start_of_helios_whatever_timeout_says():
    for probe_id in ("host.E005", "host.E006", "host.E007"):
        assert base.REGISTRY[probe_id].limit(5) >= 120
