"""Settings modules to run a Helios project with helios-aws, without editing Helios."""
