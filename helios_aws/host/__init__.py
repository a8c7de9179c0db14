"""The host half of ``aws_provision``: one verified SSH connection (``ssh``), the OS
recipes (``recipes``), what a release is made of (``release``) and the idempotent steps
that turn a bare server into a serving Helios (``steps``)."""
