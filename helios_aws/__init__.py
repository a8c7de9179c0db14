"""helios-aws: configure, provision and check a Helios voting server on AWS."""

__version__ = "0.1.0"
