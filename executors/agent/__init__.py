"""The Anthropic agent executor (``agent``): model, tools, budget, loop detection, trajectory."""

from codeworker.executors.agent.agent import AgentStopped, ContextWindowExceeded, ModelRefused
from codeworker.executors.agent.budget import Ledger, UnknownModelPrice
from codeworker.executors.agent.executor import AgentExecutor
from codeworker.executors.agent.model import AnthropicModel, InvalidReply, Model, ModelError
from codeworker.executors.agent.tools import TOOL_DEFINITIONS, ToolResult, Tools

__all__ = [
    "TOOL_DEFINITIONS",
    "AgentExecutor",
    "AgentStopped",
    "AnthropicModel",
    "ContextWindowExceeded",
    "InvalidReply",
    "Ledger",
    "Model",
    "ModelError",
    "ModelRefused",
    "ToolResult",
    "Tools",
    "UnknownModelPrice",
]
