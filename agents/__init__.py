"""Search agents behind a registry; they see only `spaces` types (no torchvision, ray or evaluators)."""
from .base import Agent, Price
from .registry import agent_class, agent_options, list_agents, make_agent, register_agent

__all__ = ["Agent", "Price", "agent_class", "agent_options", "list_agents", "make_agent", "register_agent"]
