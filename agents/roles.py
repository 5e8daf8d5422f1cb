"""Resolve a role name to the class that serves it (`[agents]` in the config, `module:Class`)."""

from __future__ import annotations

import importlib

from agentnas.bus.config import Config

ROLES = ("planner", "explorer", "code_executor")
RULE_PLANNER = "agentnas.agents.planner:RulePlannerRole"


class RoleError(ValueError):
    pass


def role_class(config: Config, role: str) -> type:
    if role not in ROLES:
        raise RoleError(f"unknown agent role '{role}'; roles: {', '.join(ROLES)}")
    path = getattr(config.agents, role)
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RoleError(f"agents.{role} = '{path}' cannot be loaded ({exc})") from None
    if getattr(cls, "name", None) != role:
        raise RoleError(f"agents.{role} = '{path}' serves role '{getattr(cls, 'name', None)}', not '{role}'")
    return cls
