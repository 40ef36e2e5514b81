"""AWS Signature Version 4, checked with botocore's own signer: the request is rebuilt from
the headers it says it signed, signed again with the secret on file for its access key, and
the two signatures compared in constant time. Anything else is EC2's AuthFailure."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from harness.api.accounts import Account
from harness.api.errors import ApiError

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)  # EC2's window for a request's X-Amz-Date


def _fail(message: str) -> ApiError:
    return ApiError("AuthFailure", message)


def _fields(authorization: str) -> dict[str, str]:
    if not authorization.startswith(ALGORITHM + " "):
        raise _fail("AWS was not able to validate the provided access credentials")
    out: dict[str, str] = {}
    for part in authorization[len(ALGORITHM) + 1 :].split(","):
        key, eq, value = part.strip().partition("=")
        if eq:
            out[key] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= set(out):
        raise _fail("the Authorization header lacks Credential, SignedHeaders or Signature")
    return out


def verify(
    method: str,
    host_url: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    accounts: Mapping[str, Account],
) -> tuple[Account, str]:
    """The account whose secret signed this request, and the service it was signed for."""
    lower = {k.lower(): v for k, v in headers.items()}
    f = _fields(lower.get("authorization", ""))
    scope = f["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _fail("the credential scope is malformed")
    key_id, day, region, service = scope[:4]
    account = accounts.get(key_id)
    if account is None:
        raise _fail("AWS was not able to validate the provided access credentials")
    amz_date = lower.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _fail("X-Amz-Date is missing or malformed") from None
    if abs(datetime.now(UTC) - when) > MAX_SKEW or not amz_date.startswith(day):
        raise ApiError("RequestExpired", f"Request has expired (X-Amz-Date {amz_date})")
    signed = [h for h in f["SignedHeaders"].split(";") if h]
    if "host" not in signed:
        raise _fail("the host header must be signed")
    request = AWSRequest(
        method=method,
        url=host_url + path_and_query,
        headers={h: lower[h] for h in signed if h in lower},
        data=body,
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, account.secret_access_key), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, f["Signature"]):
        raise _fail(
            "AWS was not able to validate the provided access credentials "
            "(the signature does not match)"
        )
    return account, service
