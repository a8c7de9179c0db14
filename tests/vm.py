"""The Debian 13 guest of the end-to-end tests, as a pytest fixture (the VM itself is
``helios_aws.rehearse.vm``, which the rehearsal uses too)."""

import pytest

from helios_aws.rehearse.vm import boot, debian_mirrors, missing_tools  # noqa: F401

_shared = None


@pytest.fixture(scope="session")
def debian_vm():
    """A booted Debian 13 guest (``VM``) shared by the whole test session.

    Every session starts from the pristine cached image. Skips only when qemu or the image
    tools are not installed.
    """
    global _shared
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install qemu-system-x86 qemu-utils "
            "debootstrap e2fsprogs openssh-client)"
        )
    # One guest per process even when several modules import this fixture.
    if _shared is None or _shared.process.poll() is not None:
        _shared = boot()
    yield _shared
    _shared.stop()
