"""The instance's monthly price: from the AWS Price List API for the deployment's region
and instance type, else from the built-in table, and the plan says which. moto serves no
price list, so the one GetProducts call is stubbed with botocore's Stubber here; the
plan's fallback against the local AWS is in test_provision_aws.py."""

import json

import pytest
from botocore.stub import Stubber

from helios_aws.aws import pricing
from helios_aws.aws.session import AWS


def product(hourly, instance_type="t3.small", region="eu-west-3"):
    """One PriceList item as the API returns it: a JSON string."""
    return json.dumps({
        "product": {"attributes": {"instanceType": instance_type, "regionCode": region}},
        "terms": {"OnDemand": {"SKU.JRTCKXETXF": {"priceDimensions": {
            "SKU.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "pricePerUnit": {"USD": f"{hourly:.10f}"},
                "description": f"${hourly} per On Demand Linux {instance_type} Instance Hour",
            }}}}},
    })


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    session = AWS("eu-west-3")
    client = session.client("pricing", pricing.PRICE_LIST_REGION)
    assert client.meta.region_name == "us-east-1"  # the Price List API's endpoint
    with Stubber(client) as stubber:
        yield session, stubber


def expected_filters(instance_type, region):
    return {"ServiceCode": "AmazonEC2", "MaxResults": 10, "Filters": [
        {"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in (
            ("instanceType", instance_type), ("regionCode", region),
            ("operatingSystem", "Linux"), ("tenancy", "Shared"), ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"), ("licenseModel", "No License required"))]}


def test_the_price_of_the_deployments_region_and_type_comes_from_the_price_list(aws):
    session, stubber = aws
    stubber.add_response("get_products", {"PriceList": [product(0.0236)],
                                          "FormatVersion": "aws_v1"},
                         expected_filters("t3.small", "eu-west-3"))
    usd, source = pricing.instance_price(session, "eu-west-3", "t3.small")
    # Paris, not the table's us-east-1 0.0208 $/h.
    assert usd == round(0.0236 * 730, 2) == 17.23
    assert source == "the AWS Price List API (eu-west-3)"
    # Asked once per run.
    assert pricing.instance_price(session, "eu-west-3", "t3.small") == (usd, source)
    stubber.assert_no_pending_responses()


def test_without_the_price_list_the_table_stands_in_and_says_why(aws):
    session, stubber = aws
    stubber.add_client_error("get_products", "AccessDeniedException",
                             "User is not authorized to perform: pricing:GetProducts")
    usd, source = pricing.instance_price(session, "eu-west-3", "t3.small")
    assert usd == 15.18  # us-east-1's, from the table
    assert source == ("the built-in us-east-1 table (the AWS Price List API answered "
                      "AccessDeniedException: User is not authorized to perform: "
                      "pricing:GetProducts)")


def test_a_type_the_price_list_does_not_price_falls_back_too(aws):
    session, stubber = aws
    stubber.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"})
    usd, source = pricing.instance_price(session, "eu-west-3", "x9.huge")
    assert usd is None
    assert "has no on-demand Linux price for x9.huge in eu-west-3" in source
