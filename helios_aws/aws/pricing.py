"""A small built-in price list for the cost estimate (us-east-1, on-demand, Linux, USD).

Only an estimate: prices differ by region and change over time; the AWS Pricing
Calculator has the real figures. An instance type not listed here is "price unknown".
"""

HOURS_PER_MONTH = 730

INSTANCE_HOURLY = {
    "t2.micro": 0.0116, "t2.small": 0.023, "t2.medium": 0.0464, "t2.large": 0.0928,
    "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416, "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "t3a.micro": 0.0094, "t3a.small": 0.0188, "t3a.medium": 0.0376, "t3a.large": 0.0752,
    "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336, "t4g.large": 0.0672,
    "m5.large": 0.096, "m6i.large": 0.096, "m7i.large": 0.1008,
    "m6g.large": 0.077, "m7g.large": 0.0816,
    "c6i.large": 0.085, "c7i.large": 0.0893, "c7g.large": 0.0725,
}
GP3_PER_GB_MONTH = 0.08
SNAPSHOT_PER_GB_MONTH = 0.05
PUBLIC_IPV4_HOURLY = 0.005
HOSTED_ZONE_MONTH = 0.50
S3_STANDARD_PER_GB_MONTH = 0.023


def instance_month(instance_type):
    """USD per month of an instance running all month, or None when unknown."""
    hourly = INSTANCE_HOURLY.get(instance_type)
    return None if hourly is None else round(hourly * HOURS_PER_MONTH, 2)


def gp3_month(size_gib):
    return round(size_gib * GP3_PER_GB_MONTH, 2)


def snapshot_month(size_gib):
    """At most this much: snapshots are billed for the blocks actually stored."""
    return round(size_gib * SNAPSHOT_PER_GB_MONTH, 2)


def s3_month(size_gib):
    """S3 Standard storage (requests are a few cents a month for daily backups)."""
    return round(size_gib * S3_STANDARD_PER_GB_MONTH, 2)


def public_ipv4_month():
    return round(PUBLIC_IPV4_HOURLY * HOURS_PER_MONTH, 2)


def table(lines):
    """Rows of text for [(item, USD or None)], with a total."""
    width = max([len(item) for item, _ in lines] + [len("Total")])
    rows = []
    for item, usd in lines:
        rows.append(f"  {item:<{width}}  {'price unknown' if usd is None else f'{usd:8.2f}'}")
    total = sum(usd for _, usd in lines if usd is not None)
    unknown = " + unknown" if any(usd is None for _, usd in lines) else ""
    rows.append(f"  {'Total':<{width}}  {total:8.2f}{unknown}")
    return rows
