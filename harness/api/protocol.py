"""EC2's Query protocol from botocore's service model, through moto's parser and serializer.

moto (pinned in pyproject.toml) ships model-driven protocol classes that stand on their own:
`EC2QueryParser` turns `ImageId.1`, `Filter.1.Value.1`, `BlockDeviceMapping.1.Ebs.VolumeSize`
into the operation's input structure, and `EC2Serializer` writes any output structure as
EC2's XML (locationName, `item` lists, the namespace, `requestId`) and errors as
`<Response><Errors><Error>…`. Nothing here knows an action's fields; botocore's
`ParamValidator` checks what was parsed against the same model (required members, types).
STS GetCallerIdentity, which SDKs and Terraform send to the same endpoint, is the Query
protocol with STS's model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from botocore.validate import ParamValidator
from moto.core.model import OperationModel, ServiceModel
from moto.core.parse import EC2QueryParser, QueryParser
from moto.core.serialize import EC2Serializer, QuerySerializer, SerializationContext

from harness.api.errors import ApiError

EC2_VERSION = "2016-11-15"
EC2_NAMESPACE = f"http://ec2.amazonaws.com/doc/{EC2_VERSION}/"


@functools.cache
def service_model(service: str) -> ServiceModel:
    from moto.core.utils import get_service_model

    return get_service_model(service)


@functools.cache
def operation(service: str, action: str) -> OperationModel | None:
    model = service_model(service)
    if action not in model.operation_names:
        return None
    return model.operation_model(action)


def parse(service: str, action: str, values: Mapping[str, str]) -> dict[str, Any]:
    """The operation's input from the form's fields; MissingParameter/InvalidParameterValue
    when they do not fit the model."""
    op = operation(service, action)
    if op is None:
        raise ApiError("InvalidAction", f"The action {action} is not valid for this web service.")
    parser = EC2QueryParser(op) if service == "ec2" else QueryParser(op)
    try:
        params = parser.parse({"values": values})  # type: ignore[typeddict-item]
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError("InvalidParameterValue", f"{action}: {e}") from None
    if op.input_shape is not None:
        report = ParamValidator().validate(params, op.input_shape)
        if report.has_errors():
            raise _validation_error(report.generate_report())
    return params


def _validation_error(report: str) -> ApiError:
    lines = [ln.strip() for ln in report.splitlines()[1:] if ln.strip()]
    first = lines[0] if lines else report
    if first.startswith("Missing required parameter"):
        name = first.split('"')[1] if '"' in first else first
        return ApiError("MissingParameter", f"The request must contain the parameter {name}")
    return ApiError("InvalidParameterValue", first)


class _Ec2Serializer(EC2Serializer):
    def _serialize_namespace_attribute(self, serialized: Any) -> None:
        serialized["@xmlns"] = EC2_NAMESPACE  # with EC2's trailing slash

    def _serialize_type_structure(self, serialized: Any, value: Any, shape: Any, key: str) -> None:
        """Results here are plain dicts: walk the members they hold rather than ask for each
        of the shape's (an Instance has ~90; a record holds ~30), and read them directly
        rather than through moto's attribute picker. Same output, a third of the time."""
        if not isinstance(value, dict):
            super()._serialize_type_structure(serialized, value, shape, key)
            return
        wrapper: Any = self.MAP_TYPE() if key else serialized
        members = shape.members
        for member_key, member_value in value.items():
            member_shape = members.get(member_key)
            if member_shape is None or member_value is None:
                continue
            member_shape.parent = shape
            self._serialize(wrapper, member_value, member_shape, member_key)
        if key:
            self._default_serialize(serialized, wrapper, shape, key)


def reply(service: str, action: str, result: Mapping[str, Any], request_id: str) -> bytes:
    op = operation(service, action)
    assert op is not None
    cls = _Ec2Serializer if service == "ec2" else QuerySerializer
    out = cls(op, SerializationContext(request_id)).serialize(dict(result))
    return str(out["body"]).encode()


class _Fault(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def error(service: str, err: ApiError, request_id: str) -> bytes:
    """EC2's `<Response><Errors>…` (STS: `<ErrorResponse>`), whatever the action."""
    action = "DescribeRegions" if service == "ec2" else "GetCallerIdentity"
    op = operation(service, action)
    assert op is not None
    cls = _Ec2Serializer if service == "ec2" else QuerySerializer
    out = cls(op, SerializationContext(request_id)).serialize(_Fault(err.code, err.message))
    return str(out["body"]).encode()
