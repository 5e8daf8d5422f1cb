"""Resolve a role name to the class that serves it: `[agents]` in the config names one as
`module:Class`, or leaves it "" for the built-in class below."""

from __future__ import annotations

import importlib

from agentnas.bus.config import Config

BUILT_IN = {
    "planner": "agentnas.agents.planner:LlmPlanner",
    "explorer": "agentnas.agents.explorer:ExplorerRole",
    "code_executor": "agentnas.agents.code_executor:CodeExecutorRole",
    "modularizer": "agentnas.agents.modularizer:ModularizerRole",
    "slot_planner": "agentnas.agents.slot_planner:SlotPlannerRole",
    "evolver": "agentnas.agents.evolver:EvolverRole",
}
ROLES = tuple(BUILT_IN)
RULE_PLANNER = "agentnas.agents.planner:RulePlannerRole"
# With no LLM at all (`--llm none`): the roles that would call one are served by these instead.
WITHOUT_LLM = {
    "planner": RULE_PLANNER,
    "modularizer": "agentnas.agents.modularizer:RuleModularizerRole",
    "slot_planner": "agentnas.agents.slot_planner:RuleSlotPlannerRole",
}


class RoleError(ValueError):
    pass


def load_role(path: str, role: str) -> type:
    """The class at `module:Class`, checked to serve `role`."""
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RoleError(f"agents.{role} = '{path}' cannot be loaded ({exc})") from None
    if getattr(cls, "name", None) != role:
        raise RoleError(f"agents.{role} = '{path}' serves role '{getattr(cls, 'name', None)}', not '{role}'")
    return cls


def role_class(config: Config, role: str) -> type:
    if role not in ROLES:
        raise RoleError(f"unknown agent role '{role}'; roles: {', '.join(ROLES)}")
    return load_role(getattr(config.agents, role) or BUILT_IN[role], role)
