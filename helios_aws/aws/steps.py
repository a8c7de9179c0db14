"""The AWS half, in order: what each step needs from the ones before it is in ``ctx.facts``
(account, image, key pair, security group, instance profile, instance, address, zone)."""

from .account import AccountStep, ImageStep
from .backups import BackupBucketStep
from .compute import HostKeyStep, InstanceStep, KeyPairStep
from .dns import DNSStep
from .identity import MailRoleStep, MailUserStep
from .mail import MailStep
from .network import ElasticIPStep, SecurityGroupStep
from .watch import AlertTopicStep, MachineAlarmsStep, SiteHealthStep


def steps(deployment):
    """The AWS steps for ``deployment`` (the mail credentials depend on
    ``ses_credentials``: an instance role by default, an IAM user with ``keys``)."""
    mail_credentials = MailUserStep() if deployment.ses_credentials == "keys" else MailRoleStep()
    return [
        AccountStep(),
        ImageStep(),
        KeyPairStep(),
        SecurityGroupStep(),
        mail_credentials,
        BackupBucketStep(),
        InstanceStep(),
        ElasticIPStep(),
        DNSStep(),
        MailStep(),
        HostKeyStep(),
        AlertTopicStep(),
        MachineAlarmsStep(),
        SiteHealthStep(),
    ]
