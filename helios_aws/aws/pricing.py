"""Prices for the cost estimate (on-demand, Linux, USD).

The instance's hourly price comes from the AWS Price List API (``pricing:GetProducts``,
served from us-east-1 whatever the deployment's region) for the deployment's region and
instance type. When it cannot be read (no permission, no network, a local AWS without a
price list), a small built-in table of us-east-1 prices stands in, and the estimate says
so. The other items (EBS, public IPv4, S3, Route 53, CloudWatch alarms) come from that table: they vary
little between regions. Only an estimate: the AWS Pricing Calculator has the real
figures. An instance type the table does not list is "price unknown".
"""

import json

import botocore.exceptions

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
# CloudWatch: a standard-resolution metric alarm; Route 53: a health check of an AWS
# endpoint, and what HTTPS adds to it (an optional feature).
ALARM_MONTH = 0.10
HEALTH_CHECK_MONTH = 0.50
HEALTH_CHECK_HTTPS_MONTH = 1.00


def instance_month(instance_type):
    """USD per month of an instance running all month, or None when unknown."""
    hourly = INSTANCE_HOURLY.get(instance_type)
    return None if hourly is None else round(hourly * HOURS_PER_MONTH, 2)


PRICE_LIST_REGION = "us-east-1"
PRICE_LIST = "the AWS Price List API"
TABLE = "the built-in us-east-1 table"


def instance_price(aws, region, instance_type):
    """(USD per month of ``instance_type`` running all month in ``region`` or None, and
    where the price came from: :data:`PRICE_LIST`, or :data:`TABLE` with the reason the
    API could not be used)."""
    return aws.cached(("price", region, instance_type),
                      lambda: _instance_price(aws, region, instance_type))


def _instance_price(aws, region, instance_type):
    filters = {"instanceType": instance_type, "regionCode": region,
               "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
               "capacitystatus": "Used", "licenseModel": "No License required"}
    try:
        answer = aws.client("pricing", PRICE_LIST_REGION).get_products(
            ServiceCode="AmazonEC2", MaxResults=10,
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v}
                     for k, v in filters.items()])
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        message = " ".join(str(error.get("Message") or "").split())
        if not message or message.startswith("<"):  # an HTML error page
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"HTTP {status}"
        reason = f"{error.get('Code') or 'error'}: {message[:200]}"
        return instance_month(instance_type), f"{TABLE} ({PRICE_LIST} answered {reason})"
    except botocore.exceptions.BotoCoreError as exc:
        return instance_month(instance_type), f"{TABLE} ({PRICE_LIST} unreachable: {exc})"
    hourly = _on_demand_hourly(answer.get("PriceList", []))
    if hourly is None:
        return (instance_month(instance_type),
                f"{TABLE} ({PRICE_LIST} has no on-demand Linux price for {instance_type} "
                f"in {region})")
    return round(hourly * HOURS_PER_MONTH, 2), f"{PRICE_LIST} ({region})"


def _on_demand_hourly(price_list):
    """The hourly USD price in the first product's on-demand terms (the items are JSON
    strings), or None."""
    for item in price_list:
        try:
            product = json.loads(item) if isinstance(item, str) else item
            for term in product["terms"]["OnDemand"].values():
                for dimension in term["priceDimensions"].values():
                    usd = float(dimension["pricePerUnit"]["USD"])
                    if dimension.get("unit") == "Hrs" and usd > 0:
                        return usd
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


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
