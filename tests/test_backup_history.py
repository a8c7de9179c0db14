"""Every backup object carries the SHA-256 S3 computed when it stored it (a multipart
upload's composite digest too), and a download is checked against it: against the moto
server over HTTP. (Restoring a backup written over, as the first version of its manifest
describes it, is in test_backup.py, with its database.)"""

import hashlib
import os

import boto3
import pytest

from helios_aws import backup
from helios_aws.aws.session import AWS

PART = 5 * 2 ** 20


@pytest.fixture
def bucket(aws_env):
    boto3.client("s3").create_bucket(Bucket="helios-history-test",
                                     ObjectLockEnabledForBucket=True)
    return "helios-history-test"


def test_an_upload_in_parts_is_checked_against_the_composite_sha256_s3_holds(bucket):
    s3 = AWS("us-east-1").client("s3")
    data = os.urandom(PART) * 2 + b"tail"
    upload = backup.Upload(s3, bucket, "helios/daily/big", part_size=PART)
    upload.write(data)
    upload.close()

    held = s3.get_object(Bucket=bucket, Key="helios/daily/big",
                         ChecksumMode="ENABLED")["ChecksumSHA256"]
    assert held.endswith("-3")
    download = backup.Download(s3, bucket, "helios/daily/big", hashlib.sha256(data).hexdigest())
    download.drain()
    assert download.finished and download.s3_digest() == held


def test_an_object_s3_holds_no_sha256_for_is_refused(bucket):
    s3 = AWS("us-east-1").client("s3")
    s3.put_object(Bucket=bucket, Key="helios/daily/x/db.dump", Body=b"dump")

    download = backup.Download(s3, bucket, "helios/daily/x/db.dump",
                               hashlib.sha256(b"dump").hexdigest())
    with pytest.raises(backup.BackupError, match="S3 holds no SHA-256 for s3://"):
        download.drain()
