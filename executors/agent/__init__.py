"""The Anthropic agent executor (``agent``): model, tools, budget, loop detection, trajectory."""

from executors.agent.agent import AgentStopped, ContextWindowExceeded, ModelRefused
from executors.agent.budget import Ledger, UnknownModelPrice
from executors.agent.executor import AgentExecutor
from executors.agent.model import AnthropicModel, InvalidReply, Model, ModelError
from executors.agent.tools import TOOL_DEFINITIONS, ToolResult, Tools

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
