"""Rehearse a deployment on this machine: no AWS account, no cost, no public name.

The rehearsal runs the real commands against local stand-ins that speak the same
protocols: a local AWS (moto in server mode), a local ACME server (pebble) with its own
certificate authority, and, as the instance, a Debian 13 VM under qemu. The same modules
serve the test suite. They need the ``rehearse`` extra (``pip install
'helios-aws[rehearse]'``) and, for the ACME server and the VM, Debian's ``pebble``,
``qemu-system-x86``, ``qemu-utils``, ``debootstrap`` and ``e2fsprogs``.

    python -m helios_aws.rehearse --project PATH [--vm]
"""
