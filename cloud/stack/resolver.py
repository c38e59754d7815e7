"""The template's intrinsic functions evaluated in Python, for one stack name and account.

`Resolver` evaluates the few intrinsic functions `cloud.stack.template` uses, so checks (and
stand-ins such as moto, whose CloudFormation skips the topic rule and the Glue resources)
can see a resource's concrete properties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud.stack.template import build

_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


@dataclass
class Resolver:
    """Evaluates Ref, Fn::Sub, Fn::GetAtt, Fn::If, Fn::Join, Fn::Split and conditions.

    `physical` maps a logical resource id to what its Ref returns, `attributes` maps
    "LogicalId.Attribute" to its Fn::GetAtt value; parameters not given take their defaults.
    """

    stack_name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    physical: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    account_id: str = "123456789012"
    region: str = "us-east-1"
    partition: str = "aws"
    template: Mapping[str, Any] = field(default_factory=build)

    _NO_VALUE = object()

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::AccountId": self.account_id,
            "AWS::Region": self.region,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": self._NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template.get("Parameters", {}):
            return self.template["Parameters"][name].get("Default", "")
        if name in self.physical:
            return self.physical[name]
        raise KeyError(f"Ref {name}: not a parameter, pseudo parameter or known resource")

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resource(self, logical_id: str) -> dict[str, Any]:
        """A resource's Properties with every function evaluated."""
        props = self.resolve(self.template["Resources"][logical_id].get("Properties", {}))
        assert isinstance(props, dict)
        return props

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not self._NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self._function(key, arg)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not self._NO_VALUE}

    def _function(self, name: str, arg: Any) -> Any:
        if name == "Fn::If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if name == "Fn::Equals":
            left, right = (self.resolve(a) for a in arg)
            return str(left) == str(right)
        if name == "Fn::Not":
            return not self.resolve(arg[0])
        if name == "Fn::Join":
            sep, items = arg
            return sep.join(str(i) for i in self.resolve(items))
        if name == "Fn::Split":
            sep, text = arg
            return str(self.resolve(text)).split(sep)
        if name == "Fn::GetAtt":
            return self.attributes[f"{arg[0]}.{arg[1]}"]
        if name == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else arg
            local = {k: self.resolve(v) for k, v in names.items()}
            return _SUB_VARIABLE.sub(lambda m: self._sub_variable(m.group(1), local), text)
        raise ValueError(f"{name} is not supported by this resolver")

    def _sub_variable(self, name: str, local: Mapping[str, Any]) -> str:
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in local:
            return str(local[name])
        if "." in name:
            return str(self.attributes[name])
        return str(self.ref(name))
