"""What moto 5.2.6 does not read from an AWS::ElasticLoadBalancingV2 template, handed to its own API.

moto's CloudFormation handlers for the load balancer and its target groups read only some properties:
- `AWS::ElasticLoadBalancingV2::LoadBalancer`: `Type` and `LoadBalancerAttributes` are ignored, so every load
  balancer becomes an application load balancer, whose listeners refuse TCP: the stack cannot even be created.
- `AWS::ElasticLoadBalancingV2::TargetGroup`: `Targets` and `TargetGroupAttributes` are ignored.
- `AWS::EC2::Instance`: `SecurityGroupIds` (the property a VPC instance must use) is ignored; moto reads only
  `SecurityGroups`, so every instance lands in the VPC's default group.
`apply()` wraps those handlers so that the same properties of the same template reach moto's backends through
their ordinary calls (create_load_balancer with the type, register_targets, modify_*_attributes, run_instances with
the groups). Nothing is invented here: every value comes from the template; the tests read them back through the
elbv2 and ec2 APIs.
The moto server runs in this process (ThreadedMotoServer), so the wrapper applies to it.
"""

from __future__ import annotations

from typing import Any

from moto.ec2.models import instances as ec2_instances
from moto.elbv2 import models as elbv2_models

_APPLIED = False


def _attributes(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {item["Key"]: item["Value"] for item in items or []}


def apply() -> None:
    global _APPLIED  # noqa: PLW0603 - patch once per process
    if _APPLIED:
        return
    _APPLIED = True
    original_target_group = elbv2_models.FakeTargetGroup.create_from_cloudformation_json.__func__
    original_instance = ec2_instances.Instance.create_from_cloudformation_json.__func__

    def instance(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
                 **kwargs: Any) -> Any:
        properties = cloudformation_json["Properties"]
        if "SecurityGroupIds" in properties and "SecurityGroups" not in properties:
            properties = {**properties, "SecurityGroups": properties["SecurityGroupIds"]}
        return original_instance(cls, resource_name, {**cloudformation_json, "Properties": properties}, account_id,
                                 region_name, **kwargs)

    def load_balancer(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
                      **kwargs: Any) -> Any:
        properties = cloudformation_json["Properties"]
        backend = elbv2_models.elbv2_backends[account_id][region_name]
        balancer = backend.create_load_balancer(
            resource_name, properties.get("SecurityGroups"), properties.get("Subnets"),
            scheme=properties.get("Scheme", "internet-facing"), loadbalancer_type=properties.get("Type"))
        attributes = _attributes(properties.get("LoadBalancerAttributes"))
        if attributes:
            backend.modify_load_balancer_attributes(balancer.arn, attributes)
        return balancer

    def target_group(cls: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
                     **kwargs: Any) -> Any:
        group = original_target_group(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        properties = cloudformation_json["Properties"]
        backend = elbv2_models.elbv2_backends[account_id][region_name]
        if properties.get("Targets"):
            backend.register_targets(group.arn, properties["Targets"])
        attributes = _attributes(properties.get("TargetGroupAttributes"))
        if attributes:
            backend.modify_target_group_attributes(group.arn, attributes)
        return group

    elbv2_models.FakeLoadBalancer.create_from_cloudformation_json = classmethod(load_balancer)
    elbv2_models.FakeTargetGroup.create_from_cloudformation_json = classmethod(target_group)
    ec2_instances.Instance.create_from_cloudformation_json = classmethod(instance)
